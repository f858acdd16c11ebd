"""score_jax command line: train, evaluate or sample a score model (flags of the official score_sde).

  python main.py --workdir runs/digits                      # train on the embedded default data set
  python main.py --workdir runs/digits --mode eval          # evaluate its checkpoints
  python main.py --config configs/vp/cifar10_ddpmpp_continuous.py --workdir runs/cifar10 \
      --config.training.n_iters=200
Multi-host (GPU clusters): add --coordinator_address host:port --num_processes N --process_id i on
every process; on a Cloud TPU pod pass --coordinator_address auto.
"""

import logging as pylogging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from score_jax import errors, xla_cpu

# Before JAX starts its CPU backend, which reads XLA_FLAGS once (see score_jax/xla_cpu.py).
xla_cpu.configure()

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(_HERE, "configs", "vp", "digits_ddpmpp_continuous.py")
MODES = ("train", "eval", "train_eval", "fid_stats", "sample", "train_classifier")

FLAGS = flags.FLAGS
# Set SCORE_JAX_TRACEBACK=1 to see the stack trace of a user error as well as its message.
_SHOW_TRACEBACK = os.environ.get("SCORE_JAX_TRACEBACK", "") not in ("", "0")


def _config_error(e: BaseException) -> str:
    """One line from ml_collections' error for an unknown or mistyped --config.<field> override."""
    text = str(e).strip("'\"").replace("\\'", "'").replace("\\n", " ")
    return f"--config override: {' '.join(text.split())}"


def _define_config_flag() -> None:
    # config_flags applies the --config.* overrides when the flags are parsed, so a misspelt field
    # fails before main() runs; a config file that cannot be loaded fails at first use (_config).
    try:
        config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Training configuration file.",
                                        lock_config=True)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        if _SHOW_TRACEBACK or __name__ != "__main__":
            raise
        print(f"error: {_config_error(e)}", file=sys.stderr)
        sys.exit(2)


_define_config_flag()
flags.DEFINE_string("workdir", None, "Work directory: checkpoints, logs, samples.")
flags.DEFINE_enum("mode", "train", MODES,
                  "Running mode: train, eval, train_eval (train, then evaluate the result), or "
                  "fid_stats (reference statistics of the data set for the sample metrics), or "
                  "sample (config.sample.task on a trained workdir), or train_classifier (the "
                  "noise-conditional classifier of sample.task='conditional').")
flags.DEFINE_string("eval_folder", "eval", "Folder name (under workdir) for evaluation results.")
flags.DEFINE_string("init_from_official", None,
                    "Start from an official score_sde checkpoint file (train: initial parameters; "
                    "eval: the checkpoint to evaluate).")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0 for a multi-host job ('auto' on Cloud TPU).")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-host job.")
flags.DEFINE_integer("process_id", None, "Index of this process in a multi-host job.")
flags.mark_flags_as_required(["workdir"])


# Warnings that third-party libraries print on every run and that ask nothing of the user.
_BENIGN_WARNINGS = (
    "OpenCV is not installed",                     # tfds decodes PNGs with PIL instead: fine
    "has no dataset_info.json",                    # tfds, while it writes the digits data set
    "setting save_interval_steps=0",               # orbax, reading checkpoints for evaluation
    "Given directory is read only",                # orbax, idem
)


class _DropBenign(pylogging.Filter):
    def filter(self, record: pylogging.LogRecord) -> bool:
        message = record.getMessage()
        if any(text in message for text in _BENIGN_WARNINGS):
            return False
        # orbax logs the trace of a save that hit a full or read-only disk from each of its
        # threads; the run stops with one line that says so (workdir.stop_on_write_failure).
        from score_jax import workdir
        return not (record.exc_info and workdir.write_failure(record.exc_info[1]))


def _quiet_third_party() -> None:
    """Hide the benign warnings above (every handler, so absl's and Python's alike)."""
    for handler in pylogging.getLogger().handlers:
        handler.addFilter(_DropBenign())
    previous = sys.unraisablehook

    def unraisable(args) -> None:
        # After a checkpoint save fails (a full disk), orbax closes its event loop while
        # tensorstore's writes still complete; each completion callback then fails with "Event
        # loop is closed" in a C++ thread, reported as unraisable, hundreds of times. The failure
        # itself is reported in one line.
        if args.exc_type is RuntimeError and str(args.exc_value) == "Event loop is closed":
            return
        previous(args)

    sys.unraisablehook = unraisable


def _config():
    """The parsed config; a config file that does not exist or does not load is a user error."""
    try:
        config = FLAGS.config
        config.keys()  # a config that failed to load raises on first use, not on access
        return config
    except Exception as e:  # noqa: BLE001 - any failure of the user's config file
        detail = " ".join(str(e).split())
        if "No such file or directory" in detail:
            detail = "no such file"
        raise errors.InvalidInputError(
            f"--config {config_flags.get_config_filename(FLAGS['config'])}: cannot load it "
            f"({detail}); pass a config file such as configs/vp/cifar10_ddpmpp_continuous.py."
        ) from None


def main(argv, coordinator_slot: list) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
        _quiet_third_party()
    config = _config()
    if (FLAGS.num_processes or 1) > 1 and FLAGS.process_id is not None and "jax" not in sys.modules:
        # Before JAX starts (a config file that imports JAX goes without): a lost coordinator then
        # ends this process in one line, not an abort.
        from score_jax import process_guard
        process_guard.fork_and_watch(FLAGS.process_id, FLAGS.coordinator_address)
    # jax.distributed must be initialised before anything touches a JAX backend.
    from score_jax import coordination, parallel
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
    coordinator = coordination.Coordinator()
    coordinator_slot.append(coordinator)
    if FLAGS.mode in ("train", "train_eval"):
        from score_jax import train
        train.train(config, FLAGS.workdir, init_from_official=FLAGS.init_from_official)
    if FLAGS.mode in ("eval", "train_eval"):
        from score_jax import evaluate
        evaluate.evaluate(config, FLAGS.workdir, FLAGS.eval_folder,
                          init_from_official=FLAGS.init_from_official, coordinator=coordinator)
    if FLAGS.mode == "fid_stats":
        from score_jax import fid_stats
        fid_stats.fid_stats(config, FLAGS.workdir, coordinator=coordinator)
    if FLAGS.mode == "train_classifier":
        from score_jax import train_classifier
        train_classifier.train_classifier(config, FLAGS.workdir, coordinator=coordinator)
    if FLAGS.mode == "sample":
        from score_jax import sample
        sample.sample(config, FLAGS.workdir, coordinator=coordinator)
    coordinator.close()


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing; a bad flag or config override is one message and exit code 2."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        message = str(e)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        if _SHOW_TRACEBACK:
            raise
        message = _config_error(e)
    except Exception as e:  # noqa: BLE001 - the config file's get_config() itself failed
        if _SHOW_TRACEBACK:
            raise
        message = f"--config: loading the config file failed ({type(e).__name__}: {e})"
    print(f"error: {message}\nPass --helpfull to see the flags.", file=sys.stderr)
    sys.exit(2)


def _exit_after_error(coordinator_slot: list, error: BaseException, code: int) -> None:
    """Tell the other processes (if any), then leave at once: without jax.distributed's shutdown
    barrier, which would wait minutes for a process that is gone, and without joining library
    threads that wait for work that will never come (orbax's save threads after a failed write)."""
    if coordinator_slot:
        coordinator_slot[0].fail(error)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, without a stack trace."""
    slot: list = []
    try:
        app.run(lambda argv: main(argv, slot), flags_parser=_parse_flags)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - reported below, with its trace unless a user error
        if _SHOW_TRACEBACK or not isinstance(e, errors.UserError):
            import traceback
            traceback.print_exc()
            _exit_after_error(slot, e, 1)
        prefix = "" if not slot or slot[0].count == 1 else f"process {slot[0].index}: "
        print(f"error: {prefix}{e}", file=sys.stderr)
        _exit_after_error(slot, e, 2)


if __name__ == "__main__":
    run()
