"""Run the benchmarks against TRL: `python -m benchmarks.run [--quick] [--only NAME ...]`.

`make bench` = full sizes; `BENCH_QUICK=1 make bench` = smaller sizes, every ratio still
reported, for a quick check of the harness. Results: <out>/<name>.json + .md per
benchmark, <out>/machine.json, and <out>/RESULTS.md (headline table + every section).
Full runs write to benchmarks/results/, quick runs to benchmarks/results/quick/.

`--gpu` runs benchmark 2 on CUDA with a ~100M-parameter Llama in bf16 (inputs from
`--inputs`, prepared on the CPU machine by `--prepare-only`).

`--only dpo` runs benchmark 6 alone (preference training vs TRL's DPOTrainer, about 5 minutes
on 2 cores); it builds its own preference pairs, so the conversations are not prepared for it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from benchmarks.harness import REPO, machine_description, markdown_table, run_worker, write_result
from benchmarks.suite import (
    Sizes,
    bench_data_prep,
    bench_dpo,
    bench_multiprocess,
    bench_scale,
    bench_training,
    bench_warehouse,
    summary_rows,
)

NAMES = ("data_prep", "training", "scale", "multiprocess", "warehouse", "dpo")
ON_OWN_INPUTS = {"dpo"}  # benchmarks that build their own inputs (preference pairs), not the conversations
GPU_MODEL = {  # ~100M parameters with the preset tokenizer's vocabulary
    "hidden_size": 768,
    "intermediate_size": 2560,
    "num_hidden_layers": 14,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "head_dim": 64,
}


def prepare_inputs(sizes: Sizes, work: Path) -> tuple[Path, Path]:
    """Demo conversations + tiny model (inputs/), and our shards of them for the training benchmarks."""
    from benchmarks.workload import kept_inputs, write_inputs

    inputs = work / "inputs"
    shards = work / "train-shards"
    if kept_inputs(inputs, conversations=sizes.prep_conversations) is None:
        shutil.rmtree(inputs, ignore_errors=True)
        shutil.rmtree(shards, ignore_errors=True)  # made from the old inputs, by the old code
        started = time.perf_counter()
        info = write_inputs(inputs, sizes.prep_conversations)
        print(f"  inputs: {info} ({time.perf_counter() - started:.0f}s)")
    if not (shards / "manifest.json").is_file():
        shutil.rmtree(shards, ignore_errors=True)
        run_worker(["prep-ours", "--inputs", str(inputs), "--out", str(shards)])
    return inputs, shards


def _machine_line(label: str, m: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ""
    return (
        f"- {label}: {m['cpu_model']}, {m['usable_cpus']} usable CPUs, {m['ram_gib']} GiB RAM{gpu}; "
        f"{versions}. Load average at start {m['load_average_at_start']}, at end "
        f"{m.get('load_average_at_end')} (shared machine)."
    )


def _provenance_note(name: str, payload: dict) -> str:
    """Say so when a kept result predates the current training path (results older than its MFU accounting), and
    name the machine of a result re-run on its own (`--only`), which need not be the page's machine."""
    note = ""
    if name.startswith("training") and "flop_parameters" not in payload:
        note += (
            "- This result was measured by an earlier version of the code (`git log` of its JSON file): ours then "
            "ran stock sdpa over the packed-row mask and full-vocabulary logits, MFU was 6 x parameters x tokens/s "
            "against one peak probe. It has not been re-run since (no GPU machine was available since).\n"
        )
    if "machine" in payload:
        note += _machine_line("Measured on its own run, not on the machine above", payload["machine"]) + "\n"
    return note


def write_report(out: Path, sizes: Sizes) -> None:
    """RESULTS.md from every benchmark result in `out` (so a partial re-run keeps the others)."""
    results, sections = {}, []
    for name in (*NAMES, "training_gpu"):
        if (out / f"{name}.json").is_file():
            results[name] = json.loads((out / f"{name}.json").read_text())
            sections.append((out / f"{name}.md").read_text() + _provenance_note(name, results[name]))
    header = markdown_table(["comparison", "measured", "target", "status"], summary_rows(results))
    lines = [f"# Benchmarks against TRL ({'quick' if sizes.quick else 'full'} run)", ""]
    for label, file in (("CPU machine", "machine.json"), ("GPU machine", "machine_gpu.json")):
        if (out / file).is_file():
            lines.append(_machine_line(label, json.loads((out / file).read_text())))
    lines += [
        "",
        f"Both sides of each comparison run in the same invocation, alternating, each run in its own process; "
        f"figures are medians of {sizes.repeats} runs per side, comparisons are ratios of medians.",
        "",
        header,
        "",
        *sections,
    ]
    notes = kept_notes(out / "RESULTS.md")
    (out / "RESULTS.md").write_text("\n".join(lines) + (f"\n{notes}" if notes else ""))
    print(f"wrote {out / 'RESULTS.md'}")


NOTES_HEADING = "## Notes kept by hand"


def kept_notes(path: Path) -> str:
    """The hand-written tail of an existing RESULTS.md (from NOTES_HEADING on), so a re-run keeps the history."""
    if not path.is_file():
        return ""
    text = path.read_text()
    at = text.find(NOTES_HEADING)
    return text[at:] if at >= 0 else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK", "") not in ("", "0"))
    parser.add_argument("--only", nargs="*", choices=NAMES, default=list(NAMES))
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--work", type=Path, default=REPO / "var" / "bench", help="scratch folder")
    parser.add_argument("--gpu", action="store_true", help="benchmark 2 on CUDA, ~100M params, bf16")
    parser.add_argument("--prepare-only", action="store_true", help="write the inputs and shards, then stop")
    args = parser.parse_args(argv)

    sizes = Sizes.for_mode(args.quick)
    out = args.out or (REPO / "benchmarks" / "results" / ("quick" if sizes.quick else ""))
    work = args.work / ("quick" if sizes.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"benchmarks ({'quick' if sizes.quick else 'full'}): results -> {out}, scratch -> {work}")
    names = ["training_gpu"] if args.gpu else args.only
    if args.prepare_only or set(names) - ON_OWN_INPUTS:
        inputs, shards = prepare_inputs(sizes, work)
    if args.prepare_only:
        return 0

    machine = machine_description()
    results: dict[str, dict] = {}
    sections: list[str] = []
    for name in names:
        print(f"- {name}")
        t0 = time.perf_counter()
        if name == "data_prep":
            payload, md = bench_data_prep(sizes, inputs, work / "prep")
        elif name == "training":
            payload, md = bench_training(sizes, inputs / "model", shards, work / "train")
        elif name == "training_gpu":
            gpu_sizes = Sizes(quick=sizes.quick, train_steps=40, train_rows=8, seq_len=2048)
            payload, md = bench_training(
                gpu_sizes,
                inputs / "model",
                shards,
                work / "train-gpu",
                device="cuda",
                model_overrides=json.dumps(GPU_MODEL),
                extra=["--lr", "3e-4", "--warmup-steps", "5"],
            )
        elif name == "scale":
            payload, md = bench_scale(sizes, inputs / "model", work / "scale")
        elif name == "warehouse":
            payload, md = bench_warehouse(sizes, inputs / "model", work / "warehouse")
        elif name == "dpo":
            payload, md = bench_dpo(sizes, work / "dpo")
        else:
            payload, md = bench_multiprocess(sizes, inputs / "model", shards, work / "multi")
        payload["seconds"] = time.perf_counter() - t0
        payload["quick"] = sizes.quick
        results[name] = payload
        sections.append(md)
        write_result(out, name, payload, md)
        print(md)

    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["total_seconds"] = time.perf_counter() - started
    machine["quick"] = sizes.quick
    machine_file = out / ("machine_gpu.json" if args.gpu else "machine.json")
    if args.gpu or set(names) >= set(NAMES) or not machine_file.is_file():
        machine_file.write_text(json.dumps(machine, indent=1))
    else:  # a partial re-run keeps the machine the other results were measured on; its own is in its payloads
        for name in names:
            write_result(out, name, {**results[name], "machine": machine}, sections[names.index(name)])
    write_report(out, sizes)
    print(f"done in {time.perf_counter() - started:.0f}s; {out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
