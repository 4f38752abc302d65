"""Serve the reference teacher (``opengrok_dagster.offline.reference_teacher``) on a loopback port until
interrupted, for trying prompts against it by hand:

    python -m devtools.reference_teacher --port 8765
"""

from pathlib import Path

import uvicorn

from opengrok_dagster.offline.reference_teacher import MODEL_ID, ReferenceTeacher


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="loopback port (0 = a free one)")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    teacher = ReferenceTeacher.fit(args.data_dir)
    if args.port:
        teacher.port = args.port
    print(f"{teacher.describe()}\nserving {MODEL_ID} at {teacher.base_url}", flush=True)
    uvicorn.run(
        teacher._app, host="127.0.0.1", port=teacher.port, log_level="warning", lifespan="off", interface="asgi3"
    )


if __name__ == "__main__":
    main()
