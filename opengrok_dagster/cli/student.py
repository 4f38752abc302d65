"""`opengrok promote`, `export` and `serve`: the distilled student at work outside the pipeline."""

from __future__ import annotations

import argparse
import os
import time

from opengrok_dagster.labelling.promotion import write_manual_choice
from opengrok_dagster.offline.export import export_merged, export_server, promoted_adapter
from opengrok_dagster.offline_model import check_offline_model, offline_model_dir
from opengrok_dagster.profiles import active_profile
from opengrok_dagster.settings import home_layout


def cmd_promote(args: argparse.Namespace) -> int:
    """Choose the adapter that labels posts by hand (recorded as manual), or return the choice to the rule."""
    write_manual_choice(home_layout().promotion_choice_path, None if args.mode == "auto" else args.mode)
    chosen = "the promotion rule decides" if args.mode == "auto" else f"lora:{args.mode} is chosen by hand"
    print(f"{chosen}; materialise promoted_student (then post_labels) for it to take effect")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write the promoted student merged into its base (safetensors, tokenizer, card) for plain transformers."""
    layout = home_layout()
    promoted = promoted_adapter(layout.asset_path("promoted_student"))
    target = export_merged(promoted, _student_model(), layout.student_export_dir)
    print(f"lora:{promoted['mask_mode']} merged into its base and written to {target}; `opengrok serve` serves it")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the export on an OpenAI-compatible endpoint until interrupted."""
    layout = home_layout()
    server = export_server(layout.student_export_dir, args.port, layout.student_server_log)
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    with server:
        print(
            f"serving {server.model_id} at {server.base_url} (model: {server.model_id}); Ctrl-C stops it", flush=True
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def _student_model() -> str:
    """The student, as the code location resolves it: $OPENGROK_STUDENT_MODEL, else the profile's, else the
    provisioned offline model."""
    chosen = os.environ.get("OPENGROK_STUDENT_MODEL") or active_profile().student_model
    return chosen or str(check_offline_model(offline_model_dir()))
