"""The headline table of RESULTS.md: one row per comparison, with its target and status."""

from __future__ import annotations

from typing import Any

from benchmarks.suite.sizes import status


def summary_rows(results: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """The headline table: one row per comparison with its target and status."""
    rows: list[list[Any]] = []
    if "data_prep" in results:
        r = results["data_prep"]
        rows.append(
            [
                "1. data prep: ours / TRL conversations/s",
                f"{r['ratio_conversations_per_second']:.2f}x",
                ">= 3x",
                r["target"],
            ]
        )
    for key, title in (("training", "2. CPU training"), ("training_gpu", "2. GPU training")):
        if key in results:
            t = results[key]["targets"]
            rows.append(
                [
                    f"{title}: ours / TRL padded (non-pad tokens/s)",
                    f"{t['vs_trl_padded']['value']:.2f}x",
                    ">= 2.5x",
                    t["vs_trl_padded"]["status"],
                ]
            )
            rows.append(
                [
                    f"{title}: ours / TRL packed (non-pad tokens/s)",
                    f"{t['vs_trl_packed']['value']:.2f}x",
                    ">= 1.0x",
                    t["vs_trl_packed"]["status"],
                ]
            )
            if key == "training_gpu":  # the issue asks to report GPU MFU, its 60% target is for CPU
                rows.append([f"{title}: MFU (ours)", f"{t['mfu']['value']:.1%}", "reported", "-"])
                continue
            preset = f"{results[key]['parameters'] / 1e6:.1f}M preset"
            rows.append([f"{title}: MFU (ours, {preset})", f"{t['mfu']['value']:.1%}", ">= 60%", t["mfu"]["status"]])
            for row in results[key].get("width_sweep", [])[1:]:
                size = f"hidden {row['flop_parameters']['hidden']}, {row['parameters'] / 1e6:.1f}M"
                rows.append(
                    [
                        f"{title}: MFU (ours, {size})",
                        f"{row['mfu']:.1%}",
                        ">= 60%",
                        status(0.6, row["mfu"]),
                    ]
                )
    if "scale" in results:
        t = results["scale"]["targets"]
        rows.append(
            ["3. scale: data half wall time", f"{t['minutes']['value']:.1f} min", "< 15 min", t["minutes"]["status"]]
        )
        rows.append(
            ["3. scale: peak RSS", f"{t['peak_rss_gib']['value']:.2f} GiB", "< 4 GiB", t["peak_rss_gib"]["status"]]
        )
    if "multiprocess" in results:
        r = results["multiprocess"]
        rows.append(["4. 2 processes / 1 process (tokens/s)", f"{r['ratio_2_vs_1']:.2f}x", "reported", "-"])
    if "warehouse" in results:
        r = results["warehouse"]
        rows.append(
            [
                "5. data half: DuckLake / DuckDB file (wall time)",
                f"{r['ducklake_over_file_wall']:.2f}x",
                "reported",
                "-",
            ]
        )
        rows.append(["5. DuckLake: 2 writers vs 1 (speed-up)", f"{r['two_writers_speedup']:.2f}x", "reported", "-"])
    if "dpo" in results:
        t = results["dpo"]["targets"]
        for key, what in (
            ("vs_trl_precomputed", "precomputed reference"),
            ("vs_trl_on_the_fly", "reference model"),
            ("vs_trl_lora", "LoRA, precomputed reference"),
        ):
            if key not in t:
                continue
            rows.append(
                [
                    f"6. DPO: ours / TRL DPOTrainer, {what} (pair tokens/s)",
                    f"{t[key]['value']:.2f}x",
                    f">= {t[key]['target']:g}x",
                    t[key]["status"],
                ]
            )
        loss = t["step1_loss"]
        value, target = f"{loss['value']:.1e}", f"<= {loss['target']:g}"
        rows.append(["6. DPO: step-1 loss, largest difference ours vs TRL", value, target, loss["status"]])
    return rows
