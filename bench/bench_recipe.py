"""Does the recipe learn? The whole GuardReasoner-VL recipe at toy scale on CPU, each stage evaluated held out.

What runs (all through ``guardreasoner_vl.training``, the real TRL trainers and the real ``Guard``):

1. Data: the released GuardReasoner-1B's own outputs on six text benchmarks
   (``../shared/data/guardreasoner-text/predictions-1B``). Each row's prompt is split back into request and
   AI response; its reasoning (cut to ``--reasoning-chars`` at a line end) becomes an R-SFT target in the VL
   output layout (``<think>...</think><result>Request: ...\\nResponse: ...</result>``, what the reward and the
   format check read). Labels: the gold label of the benchmark's task; request labels of the response
   benchmarks are the 1B model's own verdicts (the files carry no gold for them). XSTestResponseRefusal
   (the refusal task) is left out, and so are rows whose request + response exceed ``--max-input-chars``
   (CPU time). A seeded split gives ``--train`` training rows and ``--eval`` held-out rows.
2. Model: a small random-initialised Llama of the text family's architecture (``testing.build_tiny_text_model``
   with ``--hidden`` width, re-initialised with the usual 0.02 std), BPE tokenizer.
3. R-SFT (``run_sft``), then hard-sample mining (``mine_hard_samples``, ``--passes`` sampled passes over the
   training rows), safety-aware concatenation (``augment``, 20% merged), then GRPO (``run_rl``) twice from the
   same R-SFT model: the standard reward and Eco (beta 1/6), both with length in characters (the authors'
   unit). ``--reward-max-length`` scales the length normaliser to the toy outputs (the paper's 3072 characters
   to ~900-character outputs is a ratio of ~0.3; here ~1000 to ~300-character outputs), so Eco's cap binds.
4. Each model (random init, R-SFT, RL standard, RL Eco) is evaluated greedily on the held-out rows: parse rate,
   request F1 (harmful = positive), response F1 (rows with a response), mean output length (characters), and
   the mean standard and Eco reward of its outputs.

Printed: the learning curves (R-SFT loss; GRPO reward, reward std, completion length per step, standard vs
Eco) and the held-out table; saved: ``curves.png``, ``heldout.png`` and ``results.json`` in ``--out``.
Nothing is asserted: this shows what moves, it is not a test.

    python bench/bench_recipe.py --quick          # a few minutes on 2 free cores (~10 on a busy shared machine)
    python bench/bench_recipe.py                  # ~15-20 minutes on 2 free cores
    python bench/bench_recipe.py --train 400 --sft-steps 400 --rl-steps 24
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "guardreasoner-text" / "predictions-1B"
REQUEST_BENCHMARKS = ("AegisSafetyTest", "HarmBenchPrompt", "SimpleSafetyTests")
RESPONSE_BENCHMARKS = ("HarmBenchResponse", "XSTestReponseHarmful")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a few minutes on 2 cores")
    p.add_argument("--data", type=Path, default=DATA, help="the predictions-1B folder")
    p.add_argument("--out", type=Path, default=None, help="folder for plots and results.json (default: a temp dir)")
    p.add_argument("--train", type=int, default=None, help="training rows (quick 64, full 320)")
    p.add_argument("--eval", type=int, default=None, help="held-out rows (quick 24, full 64)")
    p.add_argument("--hidden", type=int, default=None, help="model width (quick 128, full 256)")
    p.add_argument("--reasoning-chars", type=int, default=None, help="reasoning kept per target (quick 160, full 240)")
    p.add_argument(
        "--max-input-chars", type=int, default=None, help="longest request + response (quick 600, full 1500)"
    )
    p.add_argument("--sft-batch", type=int, default=None, help="R-SFT batch (quick 4, full 8)")
    p.add_argument("--sft-steps", type=int, default=None, help="R-SFT optimizer steps (quick 60, full 300)")
    p.add_argument("--sft-lr", type=float, default=2e-3)
    p.add_argument("--passes", type=int, default=None, help="mining passes (quick 2, full 4 as in the paper)")
    p.add_argument("--rl-set", type=int, default=None, help="RL set size, 20%% merged (quick 16, full 60)")
    p.add_argument("--rl-steps", type=int, default=None, help="GRPO optimizer steps per run (quick 4, full 12)")
    p.add_argument("--generations", type=int, default=4, help="G, rollouts per prompt")
    p.add_argument("--rl-lr", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=1.2)
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (quick 96, full 160)")
    p.add_argument("--reward-max-length", type=int, default=1000, help="reward length normaliser (characters)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    quick = {
        "train": 64,
        "eval": 24,
        "hidden": 128,
        "sft_steps": 60,
        "sft_batch": 4,
        "passes": 2,
        "rl_set": 16,
        "rl_steps": 4,
        "max_new_tokens": 96,
        "reasoning_chars": 160,
        "max_input_chars": 600,
    }
    full = {
        "train": 320,
        "eval": 64,
        "hidden": 256,
        "sft_steps": 300,
        "sft_batch": 8,
        "passes": 4,
        "rl_set": 60,
        "rl_steps": 12,
        "max_new_tokens": 160,
        "reasoning_chars": 240,
        "max_input_chars": 1500,
    }
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# ------------------------------------------------------------------------------------------------ data


def _reasoning(predict: str, limit: int) -> str | None:
    body = predict.split("\n---", 1)[0].split("Answers:", 1)[0].strip()
    if not body:
        return None
    kept: list[str] = []
    for line in body.splitlines():
        if kept and len("\n".join([*kept, line])) > limit:
            break
        kept.append(line)
    return "\n".join(kept).strip() or None


def load_rows(folder: Path, *, reasoning_chars: int, max_input_chars: int = 1500) -> list[Any]:
    """TrainSample rows with R-SFT targets, from the 1B model's predictions (see the module note)."""
    from guardreasoner_vl.evaluation.loaders import parse_user_turn
    from guardreasoner_vl.parsing import parse_output
    from guardreasoner_vl.training.data import TrainSample, format_target

    rows: list[Any] = []
    for name in (*REQUEST_BENCHMARKS, *RESPONSE_BENCHMARKS):
        path = folder / name / "generated_predictions.jsonl"
        lines = [x for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]  # not splitlines: U+2028
        for number, line in enumerate(lines, start=1):
            record = json.loads(line)
            prompt = record["prompt"]
            start = prompt.find("Human user:\n")
            text, response, _ = parse_user_turn(prompt[start:])
            reasoning = _reasoning(record["predict"], reasoning_chars)
            label = str(record["label"]).strip().lower()
            if reasoning is None or text is None or label not in ("harmful", "unharmful"):
                continue
            if len(text) + len(response or "") > max_input_chars:  # keeps CPU time down; counted in the report
                continue
            if name in REQUEST_BENCHMARKS:
                request, response, response_label = label, None, None
            else:
                said = parse_output(record["predict"]).request
                if said is None or response is None:
                    continue
                request, response_label = said.value, label
            rows.append(
                TrainSample.model_validate(
                    {
                        "id": f"{name}-{number}",
                        "text": text,
                        "response": response,
                        "request_label": request,
                        "response_label": response_label,
                        "target": format_target(reasoning, request, response_label),
                        "source": name,
                    }
                )
            )
    return rows


# ----------------------------------------------------------------------------------------------- model


def build_model(path: Path, *, hidden: int, seed: int) -> Path:
    """The text family's tiny Llama, re-initialised with the usual small std (the test builder's is large)."""
    import torch
    import transformers

    from guardreasoner_vl.testing import build_tiny_text_model

    build_tiny_text_model(path, hidden_size=hidden, seed=seed)
    config = transformers.AutoConfig.from_pretrained(path)
    config.initializer_range = 0.02
    config.num_hidden_layers = 4
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    return path


# -------------------------------------------------------------------------------------------- metrics


def _f1(pairs: list[tuple[str | None, str]]) -> float | None:
    if not pairs:
        return None
    tp = sum(1 for p, g in pairs if p == "harmful" and g == "harmful")
    fp = sum(1 for p, g in pairs if p == "harmful" and g != "harmful")
    fn = sum(1 for p, g in pairs if p != "harmful" and g == "harmful")  # unparsed counts as a miss
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def evaluate(model: Path, rows: list[Any], *, max_new_tokens: int, reward_max_length: int) -> dict[str, Any]:
    """Greedy outputs of ``model`` on ``rows``: parse rate, F1, length, mean rewards (standard and Eco)."""
    from guardreasoner_vl import Guard
    from guardreasoner_vl.training.rewards import ECO_BETA, LengthAwareSafetyReward

    items = [{"text": r.text, "response": r.response} for r in rows]
    with Guard(str(model), backend="transformers", device="cpu", max_new_tokens=max_new_tokens, batch_size=16) as g:
        results = g.moderate_batch(items)
    texts = [r.raw_output for r in results]
    columns = {
        "completions": texts,
        "request_label": [r.request_label for r in rows],
        "response_label": [r.response_label or "" for r in rows],
    }
    standard = LengthAwareSafetyReward(beta=1.0, max_length=reward_max_length, unit="chars")(**columns)
    eco = LengthAwareSafetyReward(beta=ECO_BETA, max_length=reward_max_length, unit="chars")(**columns)
    request_pairs = [
        (res.request.value if res.request else None, r.request_label) for res, r in zip(results, rows, strict=True)
    ]
    response_pairs = [
        (res.response.value if res.response else None, r.response_label)
        for res, r in zip(results, rows, strict=True)
        if r.response_label is not None
    ]
    return {
        "parse_rate": sum(res.status == "ok" for res in results) / len(results),
        "request_f1": _f1(request_pairs),
        "response_f1": _f1(response_pairs),
        "request_acc": sum(p == g for p, g in request_pairs) / len(request_pairs),
        "mean_chars": sum(len(t) for t in texts) / len(texts),
        "reward_standard": sum(standard) / len(standard),
        "reward_eco": sum(eco) / len(eco),
        "example": texts[0][:300],
    }


class _Logs:
    """A TrainerCallback that keeps every log dict (built lazily: transformers is imported in main)."""

    def __new__(cls) -> Any:
        import transformers

        class Recorder(transformers.TrainerCallback):
            def __init__(self) -> None:
                self.logs: list[dict[str, float]] = []

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
                if logs:
                    self.logs.append({"step": state.global_step, **{k: v for k, v in logs.items() if _num(v)}})

        return Recorder()


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------- stages


def _common_trl(logging_steps: int) -> dict[str, Any]:
    return {
        "use_cpu": True,
        "report_to": "none",
        "logging_steps": logging_steps,
        "save_steps": 100000,
        "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from guardreasoner_vl import Guard
    from guardreasoner_vl.training import RLConfig, SFTConfig, run_rl, run_sft, save_samples
    from guardreasoner_vl.training.augment import augment
    from guardreasoner_vl.training.mining import mine_hard_samples

    # One thread by default: on a shared 2-core machine, more threads thrash (a 7x slower generation measured).
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-recipe-"))
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    rows = load_rows(args.data, reasoning_chars=args.reasoning_chars, max_input_chars=args.max_input_chars)
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    held_out, train = rows[: args.eval], rows[args.eval : args.eval + args.train]
    save_samples(train, out / "train.jsonl")
    print(f"data: {len(rows)} rows; train {len(train)}, held out {len(held_out)}", file=sys.stderr)

    base = build_model(out / "base", hidden=args.hidden, seed=args.seed)
    ev = {"max_new_tokens": args.max_new_tokens, "reward_max_length": args.reward_max_length}
    heldout: dict[str, dict[str, Any]] = {"random init": evaluate(base, held_out, **ev)}
    timings["data+init"] = time.perf_counter() - t0

    t = time.perf_counter()
    sft_logs = _Logs()
    sft = run_sft(
        SFTConfig(
            model=str(base),
            data=[str(out / "train.jsonl")],
            output_dir=str(out / "sft"),
            global_batch_size=args.sft_batch,
            max_length=1024,
            seed=args.seed,
            trl={
                **_common_trl(max(1, args.sft_steps // 30)),
                "per_device_train_batch_size": args.sft_batch,
                "max_steps": args.sft_steps,
                "learning_rate": args.sft_lr,
                "lr_scheduler_type": "cosine",
                "warmup_steps": 0.05,
            },
        ),
        callbacks=[sft_logs],
        final_dtype=None,
    )
    assert sft.final_model is not None
    timings["sft"] = time.perf_counter() - t
    heldout["R-SFT"] = evaluate(sft.final_model, held_out, **ev)

    t = time.perf_counter()
    with Guard(str(sft.final_model), backend="transformers", device="cpu", max_new_tokens=args.max_new_tokens) as g:
        mined = mine_hard_samples(
            g,
            train,
            output_dir=out / "mine",
            passes=args.passes,
            temperature=1.0,
            top_p=0.95,
            max_new_tokens=args.max_new_tokens,
            batch_size=32,
            seed=args.seed,
        )
    pool = mined.hard
    if len(pool) < 4:  # a model right on almost everything leaves no hard rows: fall back to the training rows
        print(f"mining kept only {len(pool)} hard rows; the RL set is drawn from all training rows", file=sys.stderr)
        pool = train
    rl_rows = augment(pool, ratio=0.2, seed=args.seed, image_dir=out / "merged", total=args.rl_set)
    save_samples(rl_rows, out / "rl.jsonl")
    timings["mine+augment"] = time.perf_counter() - t

    rl_logs: dict[str, list[dict[str, float]]] = {}
    for variant, eco in (("RL standard", False), ("RL Eco", True)):
        t = time.perf_counter()
        logs = _Logs()
        result = run_rl(
            RLConfig(
                model=str(sft.final_model),
                data=[str(out / "rl.jsonl")],
                output_dir=str(out / ("rl-eco" if eco else "rl")),
                eco=eco,
                length_unit="chars",
                reward_max_length=args.reward_max_length,
                rollout_batch_size=4,
                actor_batch_size=2,  # two policy updates per rollout round, as the paper's 512 / 256
                max_prompt_length=1024,
                seed=args.seed,
                trl={
                    **_common_trl(1),
                    "per_device_train_batch_size": args.generations,
                    "num_generations": args.generations,
                    "max_steps": args.rl_steps,
                    "learning_rate": args.rl_lr,
                    "temperature": args.temperature,
                    "max_completion_length": args.max_new_tokens,
                },
            ),
            callbacks=[logs],
            final_dtype=None,
        )
        assert result.final_model is not None
        rl_logs[variant] = logs.logs
        timings[variant] = time.perf_counter() - t
        heldout[variant] = evaluate(result.final_model, held_out, **ev)

    timings["total"] = time.perf_counter() - t0
    results = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "sizes": {"train": len(train), "held_out": len(held_out), "hard": len(mined.hard), "rl_set": len(rl_rows)},
        "mining": mined.counts(),
        "sft_logs": sft_logs.logs,
        "rl_logs": rl_logs,
        "heldout": heldout,
        "timings_s": timings,
        "out": str(out),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    _plots(results, out)
    return results


# ---------------------------------------------------------------------------------------------- output


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _reward_key(log: dict[str, float]) -> float | None:
    return log.get("reward")


def report(results: dict[str, Any]) -> str:
    lines = [f"sizes: {results['sizes']}   mining: {json.dumps(results['mining'])}"]
    lines.append("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["timings_s"].items()))
    losses = [(log["step"], log["loss"]) for log in results["sft_logs"] if "loss" in log]
    lines.append("\nR-SFT training loss by step:")
    lines.append("  " + "  ".join(f"{s}:{v:.2f}" for s, v in losses))
    for variant, logs in results["rl_logs"].items():
        steps = [log for log in logs if "reward" in log]
        lines.append(f"\n{variant}, per optimizer step: reward | reward std | completion length (tokens) | clip eps")
        for log in steps:
            lines.append(
                f"  step {log['step']:>3}: {_fmt(log.get('reward'), '9.2f')} | {_fmt(log.get('reward_std'), '8.2f')} | "
                f"{_fmt(log.get('completions/mean_length'), '6.1f')} | {_fmt(log.get('clip/epsilon_low'), '.3f')}"
            )
    header = (
        f"{'held out':<12} {'parse':>6} {'req F1':>7} {'resp F1':>7} {'req acc':>7} {'chars':>6} "
        f"{'r std':>9} {'r eco':>9}"
    )
    lines += ["", header, "-" * len(header)]
    for name, m in results["heldout"].items():
        lines.append(
            f"{name:<12} {_fmt(m['parse_rate'], '6.2f')} {_fmt(m['request_f1'], '7.3f')} "
            f"{_fmt(m['response_f1'], '7.3f')} {_fmt(m['request_acc'], '7.3f')} {m['mean_chars']:6.0f} "
            f"{m['reward_standard']:9.2f} {m['reward_eco']:9.2f}"
        )
    lines.append("\nan R-SFT output (held out): " + repr(results["heldout"]["R-SFT"]["example"][:240]))
    return "\n".join(lines)


def _plots(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    losses = [(log["step"], log["loss"]) for log in results["sft_logs"] if "loss" in log]
    if losses:
        axes[0].plot([s for s, _ in losses], [v for _, v in losses], marker="o")
    axes[0].set(title="R-SFT training loss", xlabel="step", ylabel="loss")
    for variant, logs in results["rl_logs"].items():
        steps = [log for log in logs if "reward" in log]
        axes[1].plot([x["step"] for x in steps], [x["reward"] for x in steps], marker="o", label=variant)
        axes[2].plot(
            [x["step"] for x in steps], [x.get("completions/mean_length", 0) for x in steps], marker="o", label=variant
        )
    axes[1].set(title="GRPO mean reward (own reward)", xlabel="step", ylabel="reward")
    axes[2].set(title="GRPO mean completion length", xlabel="step", ylabel="tokens")
    axes[1].legend()
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

    names = list(results["heldout"])
    metrics = ("parse_rate", "request_f1", "response_f1", "request_acc")
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        values = [results["heldout"][n][metric] or 0.0 for n in names]
        ax.bar([j + i * width for j in range(len(names))], values, width, label=metric)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
    ax.set(title="held-out split, greedy decoding", ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "heldout.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _args(argv)
    results = run(args)
    print(report(results))
    print(f"\nplots and results.json in {results['out']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
