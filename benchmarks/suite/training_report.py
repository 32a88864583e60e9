"""The Markdown section of benchmark 2: the sides' table, the targets, the width sweep and the profile."""

from __future__ import annotations

from typing import Any

from benchmarks.harness import markdown_table


def profile_shares(table: str) -> dict[str, float]:
    """Self-CPU shares of matmuls, attention and everything else from a torch profiler table (top rows)."""
    shares = {"matmul": 0.0, "attention": 0.0, "compiled": 0.0, "other (top rows)": 0.0}
    for line in table.splitlines():
        cells = [c for c in line.strip().split("  ") if c.strip()]
        try:
            name, share = cells[0].strip(), float(cells[1].strip().rstrip("%")) / 100
        except (IndexError, ValueError):  # header, rule and total lines
            continue
        if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"):
            shares["matmul"] += share
        elif "scaled_dot_product" in name or "attention" in name:
            shares["attention"] += share
        elif "CompiledFxGraph" in name:
            shares["compiled"] += share
        else:
            shares["other (top rows)"] += share
    return shares


def _shape_label(flop: dict[str, int]) -> str:
    return (
        f"hidden {flop['hidden']}, {flop['heads']} heads x {flop['head_dim']}, MLP {flop['intermediate']}, "
        f"{flop['layers']} layers"
    )


def training_markdown(payload: dict[str, Any]) -> str:
    med, targets = payload["median"], payload["targets"]
    labels = {
        "ours_packed": "ours, packed (BFD rows, position_ids restarts)",
        "trl_padded": f"TRL SFTTrainer, padded ({payload['trl_padded_conversations_per_step']} conversations/step)",
        "trl_packed": "TRL SFTTrainer, packing_strategy=bfd + padding_free",
    }

    def attention(m: dict[str, Any]) -> str:
        kernels = m.get("cpu_kernels") or []
        ours = f", C kernels ({' + '.join(k.replace('_', '-') for k in kernels)})" if kernels else ""
        return f"{m.get('attn_implementation', 'sdpa')}{', compiled layers' if m.get('compiled') else ''}{ours}"

    table = markdown_table(
        [
            "side",
            "attention",
            "non-pad tokens/s",
            "loss tokens/s",
            "non-pad fraction",
            "tokens/step",
            "MFU",
            "6N MFU",
            "warm-up s",
            "loss first -> final",
        ],
        [
            [
                labels[name],
                attention(m),
                m["tokens_per_second"],
                m["loss_tokens_per_second"],
                m["non_pad_fraction"],
                m["tokens_per_step"],
                f"{m['mfu']:.1%}",
                f"{m.get('mfu_6n', m['mfu']):.1%}",
                m.get("warmup_seconds", float("nan")),
                f"{m['first_loss']:.3f} -> {m['final_loss']:.3f}",
            ]
            for name, m in med.items()
        ],
    )
    where = "GPU" if payload["device"] == "cuda" else "CPU"
    threads = payload.get("threads", 0)
    thread_note = f", {threads} torch thread per process" if threads else ""
    dtype, peak = payload["dtype"], payload["peak_flops"]
    flop = payload.get("flop_parameters")
    accounting = (
        f"MFU = model FLOPs per second / peak, the same accounting for every side: per non-pad token 6 x "
        f"{flop['body']:,} body parameters + causal attention within the conversation (12 x {flop['layers']} layers "
        f"x width {flop['attention_width']} x {payload['mean_attention_context']:.1f} keys on average), per "
        f"labelled token 6 x {flop['head']:,} LM-head parameters. 6N MFU = 6 x all {payload['parameters']:,} "
        f"parameters x non-pad tokens/s / peak, for comparison."
        if flop
        else "MFU = 6 x parameters x non-pad tokens/s / peak."
    )
    md = (
        f"## 2. Training throughput on {where} ({payload['parameters'] / 1e6:.1f}M-parameter Llama, {dtype}, "
        f"{payload['steps']} optimizer steps, ~{payload['packed_rows_per_step'] * payload['seq_len']:,} token slots "
        f"per step{thread_note})\n\n{table}\n\n"
        f"- **ours / TRL padded: {targets['vs_trl_padded']['value']:.2f}x** (target >= 2.5x: "
        f"{targets['vs_trl_padded']['status']})\n"
        f"- **ours / TRL packed: {targets['vs_trl_packed']['value']:.2f}x** (target >= 1.0x: "
        f"{targets['vs_trl_packed']['status']})\n"
        f"- **MFU (ours): {targets['mfu']['value']:.1%}** of the {dtype} matmul peak measured in each run's own "
        f"process just before and after its steps (median {peak / 1e9:,.0f} GFLOP/s; target >= 60%: "
        f"{targets['mfu']['status']}). {accounting}\n"
        f"- Throughput and MFU are over the steps after the first two; warm-up s = those first steps (ours: "
        f"torch.compile of the decoder layers, cached on disk after the first run on a machine).\n"
        f"- Final loss = mean of the last 5 steps' token-mean loss; same data, steps, LR schedule on every side.\n"
    )
    if payload.get("width_sweep"):
        sweep = payload["width_sweep"]
        table = markdown_table(
            ["model (ours, same data and steps)", "parameters", "non-pad tokens/s", "MFU", "6N MFU"],
            [
                [
                    _shape_label(row["flop_parameters"]) + ("" if row["overrides"] else " (the preset above)"),
                    f"{row['parameters'] / 1e6:.1f}M",
                    row["tokens_per_second"],
                    f"{row['mfu']:.1%}",
                    f"{row['mfu_6n']:.1%}",
                ]
                for row in sweep
            ],
        )
        md += f"\nMFU by model width on this CPU (ours only; medians of {len(sweep[1]['runs'])} runs):\n\n{table}\n\n"
    if "gemm_ceilings" in payload:
        ceil = payload["gemm_ceilings"]
        md += (
            f"- The model's own GEMM shapes reach {ceil['mlp_fraction_of_peak']:.0%} (MLP, {ceil['mlp_shape']}) and "
            f"{ceil['attn_fraction_of_peak']:.0%} (attention projections, {ceil['attn_shape']}) of the peak "
            f"measured beside them, in isolation.\n"
        )
    if payload.get("profile"):
        shares = profile_shares(payload["profile"])
        md += (
            "- Where ours spends its step time (torch profiler, self CPU time): "
            + ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
            + ". Attention = packed_sdpa, each conversation on its own (our C kernel where it was built, else "
            "ATen's CPU flash kernel); its share of the time is above its share of the FLOPs because with "
            "32-wide heads each score costs one exp() per 64 multiply-adds, and the score blocks are small. "
            "Compiled = inductor's fused elementwise kernels (norms, rotary, SiLU x up, residuals), "
            "bound by memory bandwidth at these tensor sizes.\n"
        )
    return md
