"""score_jax command line: train or evaluate a score model (flags compatible with the official score_sde).

  python main.py --workdir runs/digits                      # train on the embedded default data set
  python main.py --workdir runs/digits --mode eval          # evaluate its checkpoints
  python main.py --config configs/vp/cifar10_ddpmpp_continuous.py --workdir runs/cifar10 \
      --config.training.n_iters=200
Multi-host (GPU clusters): add --coordinator_address host:port --num_processes N --process_id i on
every process; on a Cloud TPU pod pass --coordinator_address auto.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from score_jax import errors

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(_HERE, "configs", "vp", "digits_ddpmpp_continuous.py")

FLAGS = flags.FLAGS
# Set SCORE_JAX_TRACEBACK=1 to see the stack trace of a user error as well as its message.
_SHOW_TRACEBACK = os.environ.get("SCORE_JAX_TRACEBACK", "") not in ("", "0")


def _config_error(e: BaseException) -> str:
    """One line from ml_collections' error for an unknown or mistyped --config.<field> override."""
    text = str(e).strip("'\"").replace("\\'", "'").replace("\\n", " ")
    return f"--config override: {' '.join(text.split())}"


def _define_config_flag() -> None:
    # config_flags reads the config file and applies the --config.* overrides right here, at
    # definition time, so a misspelt field fails before main() runs.
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
flags.DEFINE_enum("mode", "train", ["train", "eval", "train_eval"],
                  "Running mode: train, eval, or train_eval (train, then evaluate the result).")
flags.DEFINE_string("eval_folder", "eval", "Folder name (under workdir) for evaluation results.")
flags.DEFINE_string("init_from_official", None,
                    "Start from an official score_sde checkpoint file (train: initial parameters; "
                    "eval: the checkpoint to evaluate).")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0 for a multi-host job ('auto' on Cloud TPU).")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-host job.")
flags.DEFINE_integer("process_id", None, "Index of this process in a multi-host job.")
flags.mark_flags_as_required(["workdir"])

def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    # jax.distributed must be initialised before anything touches a JAX backend.
    from score_jax import parallel
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
    if FLAGS.mode in ("train", "train_eval"):
        from score_jax import train
        train.train(FLAGS.config, FLAGS.workdir, init_from_official=FLAGS.init_from_official)
    if FLAGS.mode in ("eval", "train_eval"):
        from score_jax import evaluate
        evaluate.evaluate(FLAGS.config, FLAGS.workdir, FLAGS.eval_folder,
                          init_from_official=FLAGS.init_from_official)


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
    print(f"error: {message}\nPass --helpfull to see the flags.", file=sys.stderr)
    sys.exit(2)


def run() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, without a stack trace."""
    try:
        app.run(main, flags_parser=_parse_flags)
    except Exception as e:  # noqa: BLE001 - re-raised below unless it is a user error
        if _SHOW_TRACEBACK or not isinstance(e, errors.UserError):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
