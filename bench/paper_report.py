"""docs/paper_findings.md and its pictures, from bench/paper.py's cached cells (any subset of them)."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from bench import paper_stats as st
from score_jax import images, plots

KID_SCALE = 1.0   # KID-digits as computed (the features are unnormalised: values run to 1e4)

MODEL_LABELS = {"vp": "VP, DDPM++ cont.", "ve": "VE, DDPM++ cont.", "subvp": "sub-VP, DDPM++ cont.",
                "vp_lw": "VP + likelihood weighting + IS", "subvp_lw": "sub-VP + likelihood weighting + IS",
                "vp_disc": "VP, DDPM++ discrete (DDPM loss)", "ve_disc": "VE, DDPM++ discrete (SMLD loss)",
                "ncsn_vp": "VP, NCSN++ cont.", "ncsn_ve": "VE, NCSN++ cont.",
                "ncsn_vp_disc": "VP, NCSN++ discrete", "ncsn_ve_disc": "VE, NCSN++ discrete",
                "edm": "EDM (DDPM++, EDM formulation)"}


def write(runner: Any, out: pathlib.Path) -> None:
    """Rewrite <out>/paper_findings.md and <out>/paper_findings/*.png from runner's cells."""
    from bench import paper  # the specs; imported here to keep the import graph one-way at load

    pictures = out / "paper_findings"
    pictures.mkdir(parents=True, exist_ok=True)
    r = _Reader(runner, paper)
    verdicts: list[tuple[str, str, str, str]] = []   # (section, claim, verdict, interval)
    body = []
    for section in (_table1, _likelihood, _arch, _ode, _fewstep, _edm):
        body += section(r, verdicts, pictures)
    text = _header(r, verdicts) + body + _cost(r)
    (out / "paper_findings.md").write_text("\n".join(text) + "\n")


class _Reader:
    """Per-seed values of cells by (kind, model, label) and the run's settings."""

    def __init__(self, runner: Any, paper: Any):
        self.runner, self.paper, self.args = runner, paper, runner.args

    def s(self, name: str, label: str, metric: str = "kid", n: int | None = None) -> list | None:
        n = n or self.args.n
        v = self.runner.values(f"samples|{name}|{label}|n{n}", metric)
        return [x * KID_SCALE for x in v] if v and metric == "kid" else v

    def b(self, name: str, label: str, metric: str = "bpd") -> list | None:
        return self.runner.values(f"bpd|{name}|{label}", metric)

    def grid(self, path: pathlib.Path, keys: list[str]) -> bool:
        """Rows of 8 seed-1 samples, one row per cell key that has them; False when none has."""
        rows = []
        for key in keys:
            f = self.runner.root / "grids" / f"{self.paper._safe(key + '|1')}.npy"
            if f.exists():
                rows.append(np.load(f, allow_pickle=False))
        if not rows:
            return False
        x = np.concatenate(rows).astype(np.float32) / 255.0
        path.write_bytes(images.png_bytes(images.image_grid(x, ncol=8)))
        return True


def _quality(r: _Reader, name: str, label: str, n: int | None = None) -> str:
    """'KID-digits | FD' cells of one sampled cell."""
    return (f"{st.fmt(r.s(name, label, 'kid', n), 0)} | "
            f"{st.fmt(r.s(name, label, 'fd', n), 1)}")


def _nfe(r: _Reader, name: str, label: str, n: int | None = None) -> str:
    v = r.s(name, label, "nfe", n)
    return f"{np.mean(v):.0f}" if v else "-"


def _header(r: _Reader, verdicts: list) -> list[str]:
    a = r.args
    lines = [
        "# The paper's findings in miniature",
        "",
        "What you get here: which claims of Song et al. (ICLR 2021), ScoreFlow (NeurIPS 2021) and EDM",
        "(Karras et al., NeurIPS 2022) come out of score_jax when the experiments are shrunk to the",
        "embedded 8x8 digits on a 2-core CPU, with error bars and an honest verdict for each.",
        "Written by `bash run.sh bench/paper.py` (this page is its output; rerunning reuses the",
        "trained models cached in `.paper_work/`).",
        "",
        "**Setup.** Every model is the default DDPM++ (nf 24, 8x8, `configs/vp/digits_ddpmpp_continuous.py`)",
        "with only the fields under study changed, trained from scratch by `main.py --mode train`",
        f"for {a.steps} steps at batch 64 (NCSN++: the same wall time, see the architecture table), "
        f"under {a.seeds} training seeds.",
        "Every figure is **mean ± standard error over the training seeds**; each seed's samples come",
        "from the same prior keys in every cell. Sample quality is measured with the shipped digits",
        "classifier's features: **KID-digits** (unbiased kernel MMD^2, lower is better; comparable",
        "across sample sizes) and **FD-digits** (Frechet distance; its small-sample bias depends on the",
        f"sample size, so compare it within a table only). Samples per seed: {a.n} (Table 1, few-step",
        f"solvers), {a.n_large} (EDM, architectures, ODE). Bits/dim: the {a.bpd_examples} test digits, one",
        "dequantisation draw and one Hutchinson draw per seed (the same draws for every model),",
        "probability-flow ODE with the official RMS error norm at rtol = atol = "
        f"{r.paper.BPD_TOL:g} unless stated.",
        "",
        "**Verdicts.** Each claim compares two cells seed by seed: the 95% Student-t interval of the",
        "per-seed differences (printed as `difference [low, high]`, in the table's unit). *holds*: the",
        "interval lies on the claimed side of 0; *does not hold*: on the other side; *within noise*:",
        "it contains 0, which for a claim that A is *at least as good as* B or *matches* B means",
        "consistent with it but not shown. Only the ODE's claim is an equality: it holds while the",
        f"interval contains 0. With {a.seeds} seeds the t factor is large "
        f"({st._T95.get(a.seeds - 1, 1.96):.2f}): only clear differences are called.",
        "",
        "## Verdicts at a glance",
        "",
        "| section | claim | verdict | difference [95% interval] |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s} | {c} | {v} | {i} |" for s, c, v, i in verdicts]
    counts = {v: sum(1 for *_, w, _ in verdicts if w == v)
              for v in (st.HOLDS, st.FAILS, st.NOISE, "not run")}
    lines += ["", f"Of {len(verdicts)} claims: {counts[st.HOLDS]} hold, {counts[st.FAILS]} do not "
              f"hold, {counts[st.NOISE]} are within noise" +
              (f", {counts['not run']} not run yet." if counts["not run"] else "."), ""]
    return lines + LIMITS + [""]


LIMITS = [
    "**What a miniature can and cannot say.** The models are small and briefly trained (8x8 digits,",
    "0.4M parameters, minutes of CPU each), far from the paper's converged CIFAR-10 networks; the",
    "claims are about how samplers, SDEs, objectives and architectures rank, and a ranking that",
    "depends on scale may not transfer either way. A verdict *within noise* means these seeds and",
    "samples cannot tell, not that the claim is false; *does not hold* is a finding about this",
    "miniature. NCSN++'s equal-time budget gives it fewer steps than DDPM++, as an equal-time",
    "comparison must; the paper compared the architectures at equal steps on accelerators.",
    "KID-digits and FD-digits use the shipped digits classifier, not Inception: they compare",
    "with nothing published.",
]


def _table1(r: _Reader, verdicts: list, pictures: pathlib.Path) -> list[str]:
    p = r.paper
    lines = ["## Table 1 in miniature: reverse-time samplers", "",
             "Paper, Table 1 (CIFAR-10 FID): predictor-corrector sampling beats predictor-only sampling",
             "at the same cost (PC1000 against P2000: 2000 score evaluations each), and the reverse-",
             "diffusion predictor is at least as good as ancestral sampling. Here: the VE and VP",
             "DDPM++ models; corrector Langevin with snr 0.16, one step; the probability-flow row",
             "uses the reverse-diffusion discretisation of the ODE. Cells: KID-digits | FD-digits.",
             ""]
    for name, sde in (("ve", "VE"), ("vp", "VP")):
        lines += [f"**{sde}** ({MODEL_LABELS[name]})", "",
                  "| predictor | P1000 KID | P1000 FD | P2000 KID | P2000 FD | C2000 KID | C2000 FD "
                  "| PC1000 KID | PC1000 FD |", "|---|" + "---|" * 8]
        for row in p.PREDICTORS:
            cells = [_quality(r, name, p.table1_label(row, c)) for c in ("P1000", "P2000")]
            cells.append(_quality(r, name, "C2000"))
            cells.append(_quality(r, name, p.table1_label(row, "PC1000")))
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
        for row in p.PREDICTORS:
            v, i = st.better(r.s(name, p.table1_label(row, "PC1000")),
                             r.s(name, p.table1_label(row, "P2000")))
            verdicts.append(("Table 1", f"{sde}, {row}: PC1000 beats P2000 (KID)", v, i))
        for column in ("P1000", "P2000", "PC1000"):
            v, i = st.better(r.s(name, p.table1_label("reverse diffusion", column)),
                             r.s(name, p.table1_label("ancestral", column)))
            verdicts.append(("Table 1", f"{sde}, {column}: reverse diffusion at least as good as "
                             f"ancestral (KID)", v, i))
        keys = [f"samples|{name}|{p.table1_label(row, c)}|n{r.args.n}"
                for row in p.PREDICTORS for c in ("P1000", "P2000", "PC1000")]
        if r.grid(pictures / f"table1_{name}.png", keys + [f"samples|{name}|C2000|n{r.args.n}"]):
            lines += [f"![Table 1 samples, {sde}](paper_findings/table1_{name}.png)", "",
                      "Rows: for each predictor (reverse diffusion, ancestral, Euler-Maruyama, "
                      "probability flow) P1000, P2000, PC1000; last row C2000. Seed 1.", ""]
    return lines


def _likelihood(r: _Reader, verdicts: list, pictures: pathlib.Path) -> list[str]:
    tol = f"{r.paper.BPD_TOL:g}"
    lines = ["## Table 2 in miniature: likelihood", "",
             "Paper, Table 2 (CIFAR-10 bits/dim): the sub-VP SDE gives lower bits/dim than the VP",
             "SDE; ScoreFlow (Song et al. 2021b): training with the likelihood weighting lambda = g^2,",
             "with importance sampling of t, lowers it further, and a non-uniform (there: variational)",
             "dequantisation lowers the bound again. Here the non-uniform dequantiser is a fixed",
             "truncated normal (`score_jax/dequantization.py`), not a learned one.", "",
             "| model | bits/dim, uniform | bits/dim, truncated normal | NFE (uniform) |",
             "|---|---|---|---|"]
    for name in ("vp", "subvp", "vp_lw", "subvp_lw"):
        u, t = r.b(name, f"uniform {tol}"), r.b(name, f"truncated_normal {tol}")
        nfe = r.b(name, f"uniform {tol}", "nfe")
        lines.append(f"| {MODEL_LABELS[name]} | {st.fmt(u, 3)} | {st.fmt(t, 3)} | "
                     f"{np.mean(nfe):.0f} |" if nfe else f"| {MODEL_LABELS[name]} | not run | | |")
    lines.append("")
    for deq in ("uniform", "truncated_normal"):
        label = f"{deq} {tol}"
        for a, b, claim in (("subvp", "vp", "sub-VP lower than VP"),
                            ("vp_lw", "vp", "likelihood weighting lowers VP"),
                            ("subvp_lw", "subvp", "likelihood weighting lowers sub-VP")):
            v, i = st.better(r.b(a, label), r.b(b, label))
            verdicts.append(("Table 2", f"{claim} ({deq.replace('_', '-')} dequantisation)", v, i))
    for name in ("vp", "subvp_lw"):
        v, i = st.better(r.b(name, f"truncated_normal {tol}"), r.b(name, f"uniform {tol}"))
        verdicts.append(("Table 2", f"truncated-normal dequantisation lowers the bound "
                         f"({MODEL_LABELS[name]})", v, i))
    return lines


def _arch(r: _Reader, verdicts: list, pictures: pathlib.Path) -> list[str]:
    n = r.args.n_large
    ratio = r.runner.results.get("step_cost_ratio")
    names = ["vp", "ncsn_vp", "vp_disc", "ncsn_vp_disc", "ve", "ncsn_ve", "ve_disc", "ncsn_ve_disc"]
    lines = ["## Architectures and SDEs at equal training time", "",
             "Paper, Section 4.4 and Table 3: the architecture search settled on NCSN++ for the VE SDE",
             "and DDPM++ for the VP SDE, and continuous-time training objectives improve on the",
             "discrete ones (SMLD / DDPM losses) for both. Here each NCSN++ (FIR resampling and a",
             "residual input pyramid on top of the same nf-24 network) trains for the steps that take",
             "the wall time of the DDPM++ run"
             + (f" (NCSN++ step measured at {ratio:.2f}x DDPM++'s)" if ratio else "")
             + f". Sampler: the quick start's (stochastic Heun, NFE 20, S_churn 10), {n} samples per seed.",
             "", "| model | steps | training s | KID-digits | FD-digits | precision | recall |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        secs = [r.runner.results["train_seconds"].get(f"{name}|{s}") for s in r.runner.seeds()]
        secs = [x for x in secs if x is not None]
        lines.append(f"| {MODEL_LABELS[name]} | {r.runner.steps(name)} | "
                     f"{np.mean(secs):.0f} | " if secs else
                     f"| {MODEL_LABELS[name]} | {r.runner.steps(name)} | - | ")
        lines[-1] += (f"{st.fmt(r.s(name, 'default', 'kid', n), 0)} | "
                      f"{st.fmt(r.s(name, 'default', 'fd', n), 1)} | "
                      f"{st.fmt(r.s(name, 'default', 'precision', n), 3)} | "
                      f"{st.fmt(r.s(name, 'default', 'recall', n), 3)} |")
    lines += ["", "Training seconds: wall time of `main.py --mode train`, process start and "
              "compilation included, with two trainings sharing the machine; the step counts come "
              "from the per-step cost ratio, measured alone before any training.", ""]
    for cont, disc, what in (("vp", "vp_disc", "VP, DDPM++"), ("ve", "ve_disc", "VE, DDPM++"),
                             ("ncsn_vp", "ncsn_vp_disc", "VP, NCSN++"),
                             ("ncsn_ve", "ncsn_ve_disc", "VE, NCSN++")):
        v, i = st.better(r.s(cont, "default", "kid", n), r.s(disc, "default", "kid", n))
        verdicts.append(("Architectures", f"{what}: continuous objective beats discrete (KID)", v, i))
    for a, b, claim in (("ncsn_ve", "ve", "VE: NCSN++ beats DDPM++ (KID)"),
                        ("vp", "ncsn_vp", "VP: DDPM++ at least as good as NCSN++ (KID)")):
        v, i = st.better(r.s(a, "default", "kid", n), r.s(b, "default", "kid", n))
        verdicts.append(("Architectures", claim, v, i))
    if r.grid(pictures / "architectures.png", [f"samples|{m}|default|n{n}" for m in names]):
        lines += ["![Samples per model](paper_findings/architectures.png)", "",
                  "Rows in the table's order, seed 1.", ""]
    return lines


def _ode(r: _Reader, verdicts: list, pictures: pathlib.Path) -> list[str]:
    n = r.args.n_large
    tols = r.paper.ODE_TOLS
    lines = ["## The probability-flow ODE against solver tolerance", "",
             "Paper, Section 4.3 / Appendix D: the probability-flow ODE gives exact likelihoods; an",
             "exact likelihood should not move with the solver tolerance beyond its error bar once",
             "the solve has converged. VP model, Dormand-Prince (diffrax) with rtol = atol = tol; "
             f"{n} samples per seed; both solves with the official RMS error norm.",
             "", "| tol | sampling NFE | KID-digits | FD-digits | bits/dim NFE | bits/dim |",
             "|---|---|---|---|---|---|"]
    for tol in tols:
        nfe = r.b("vp", f"uniform {tol:g}", "nfe")
        lines.append(f"| {tol:g} | {_nfe(r, 'vp', f'ode {tol:g}', n)} | "
                     f"{_quality(r, 'vp', f'ode {tol:g}', n)} | "
                     f"{np.mean(nfe):.0f} | " if nfe else f"| {tol:g} | - | | | - | ")
        lines[-1] += f"{st.fmt(r.b('vp', f'uniform {tol:g}'), 4)} |"
    lines.append("")
    tight = f"uniform {tols[-1]:g}"
    for tol in tols[:-1]:
        v, i = st.unchanged(r.b("vp", f"uniform {tol:g}"), r.b("vp", tight))
        verdicts.append(("ODE", f"bits/dim at tol {tol:g} equals bits/dim at {tols[-1]:g}", v, i))
    return lines


def _fewstep(r: _Reader, verdicts: list, pictures: pathlib.Path) -> list[str]:
    p = r.paper
    lines = ["## Few-step solvers on the trained models", "",
             "DPM-Solver (Lu et al. 2022), DPM-Solver++ and UniPC claim samples of ~1000-step quality",
             "in 10-20 score evaluations; EDM's Heun and DDIM are the older baselines. Each at NFE",
             f"{', '.join(map(str, p.FAST_NFE))} with its default options in score_jax, against PC1000 "
             f"(reverse diffusion + Langevin), {r.args.n} samples per seed. Cells: KID-digits | FD-digits.",
             ""]
    charts = []
    for name, sde in (("ve", "VE"), ("vp", "VP"), ("subvp", "sub-VP")):
        head = " | ".join(f"NFE {k} KID | NFE {k} FD" for k in p.FAST_NFE)
        lines += [f"**{sde}**", "", f"| solver | {head} |", "|---|" + "---|" * 2 * len(p.FAST_NFE)]
        series = {}
        for solver in p.FAST:
            cells = [_quality(r, name, f"{solver} {k}") for k in p.FAST_NFE]
            lines.append(f"| {solver} | " + " | ".join(cells) + " |")
            means = [(k, r.s(name, f"{solver} {k}")) for k in p.FAST_NFE]
            pts = [(k, float(np.mean(v))) for k, v in means if v]
            if pts:
                series[solver] = ([x for x, _ in pts], [max(y, 1e-3) for _, y in pts])
        pc = r.s(name, "PC1000")
        lines += [f"| PC1000 (NFE 2000) | {_quality(r, name, 'PC1000')} | | | | |", ""]
        best = _best_at(r, name, 20)
        if best:
            v, i = st.better(r.s(name, f"{best} 20"), pc)
            verdicts.append(("Few-step", f"{sde}: the best solver at NFE 20 ({best}) matches "
                             f"PC1000 (KID)", v, i))
        if series:
            charts.append(plots.Chart(f"{sde}: KID-digits", series,
                                      {"PC1000": max(float(np.mean(pc)), 1e-3)} if pc else {},
                                      ylabel="KID-digits", log_y=True))
    if charts:
        plots.save_charts(pictures / "fewstep.png", charts)
        lines += ["![KID against NFE](paper_findings/fewstep.png)", ""]
    return lines


def _best_at(r: _Reader, name: str, nfe: int) -> str | None:
    means = {s: np.mean(v) for s in r.paper.FAST if (v := r.s(name, f"{s} {nfe}"))}
    return min(means, key=means.get) if means else None


def _edm(r: _Reader, verdicts: list, pictures: pathlib.Path) -> list[str]:
    n = r.args.n_large
    lines = ["## EDM against the VP default at equal training", "",
             "Karras et al. 2022: with its preconditioning, noise distribution, loss weighting and",
             "sigma schedule, the same network gives better samples at fewer NFE. Both models are the",
             "DDPM++ of the quick start with the same steps and optimiser; only the formulation",
             f"differs. {n} samples per seed.", "",
             "| sampler | model | KID-digits | FD-digits | precision | recall |", "|---|---|---|---|---|---|"]
    for label in r.paper.EDM_SAMPLERS:
        for name in ("edm", "vp"):
            lines.append(f"| {label} | {MODEL_LABELS[name]} | {_quality(r, name, label, n)} | "
                         f"{st.fmt(r.s(name, label, 'precision', n), 3)} | "
                         f"{st.fmt(r.s(name, label, 'recall', n), 3)} |")
    tol = f"uniform {r.paper.BPD_TOL:g}"
    lines += ["", "| model | bits/dim (uniform) | NFE |", "|---|---|---|"]
    for name in ("edm", "vp"):
        nfe = r.b(name, tol, "nfe")
        lines.append(f"| {MODEL_LABELS[name]} | {st.fmt(r.b(name, tol), 3)} | "
                     f"{np.mean(nfe):.0f} |" if nfe else f"| {MODEL_LABELS[name]} | not run | |")
    lines.append("")
    for label in list(r.paper.EDM_SAMPLERS)[:3]:
        v, i = st.better(r.s("edm", label, "kid", n), r.s("vp", label, "kid", n))
        verdicts.append(("EDM", f"EDM beats VP with {label} (KID)", v, i))
    keys = [f"samples|{m}|{label}|n{n}" for label in r.paper.EDM_SAMPLERS for m in ("edm", "vp")]
    if r.grid(pictures / "edm.png", keys):
        lines += ["![EDM and VP samples](paper_findings/edm.png)", "",
                  "Rows in the table's order (EDM, VP alternating), seed 1.", ""]
    return lines


def _cost(r: _Reader) -> list[str]:
    res = r.runner.results
    spent = res.get("phase_seconds", {})
    total = sum(spent.values())
    lines = ["## Cost", "",
             f"Machine: {res.get('machine', 'unknown')}. Wall time per phase, summed over the",
             "invocations that produced this page:", "", "| phase | wall minutes |", "|---|---|"]
    lines += [f"| {k} | {v / 60:.1f} |" for k, v in spent.items()]
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in res.get("settings", {}).items()
                     if k != "only")
    lines += [f"| **total** | **{total / 60:.1f}** |", "", f"Settings: `{flags}`.", ""]
    return lines
