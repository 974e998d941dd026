"""`kops emulator start`: the loopback Kaggle API stand-in, for dry runs against the real client."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import typer

from kaggleops.cli import app, emit, hint

emulator_app = typer.Typer(help="The loopback Kaggle API emulator.", no_args_is_help=True)
app.add_typer(emulator_app, name="emulator")


@emulator_app.command("start")
def start(
    port: int = typer.Option(0, help="Port on 127.0.0.1 (0 = a free one)."),
    root: Path = typer.Option(None, help="Folder for its state (default: a temporary folder)."),
    username: str = typer.Option("testuser", help="Accepted Kaggle username."),
    key: str = typer.Option("testkey", help="Accepted Kaggle key."),
    as_json: bool = typer.Option(False, "--json", help="Print the connection settings as JSON."),
) -> None:
    """Serve the Tweet Sentiment Extraction sample competition until Ctrl-C."""
    from kaggleops.demo import COMPETITION, seed_competition
    from kaggleops.emulator import Emulator
    from kaggleops.tasks import get_task

    emulator = Emulator(root or Path(tempfile.mkdtemp(prefix="kops-emulator-")), username=username, key=key)
    seed_competition(emulator, get_task(COMPETITION))
    url = emulator.start(port=port)
    env = {"KOPS_KAGGLE_ENDPOINT": url, "KAGGLE_USERNAME": username, "KAGGLE_KEY": key}
    emit({"url": url, "competition": COMPETITION, "env": env}, as_json,
         "\n".join(f"export {k}={v}" for k, v in env.items()))
    hint(f"Kaggle emulator on {url} (competition {COMPETITION}); Ctrl-C stops it.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        emulator.stop()
