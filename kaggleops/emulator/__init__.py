"""A loopback Kaggle API emulator that the real ``kaggle`` client (2.2.5 / kagglesdk) can talk to.

Usage (in-process, what the tests do)::

    emu = Emulator(tmp_path / "emu")
    emu.add_competition("tiny", {"test.csv": path}, solution, "id", "label", "accuracy")
    emu.seed_folder(bundled_competition("digit-recognizer"))   # a folder with competition.json (seed.py)
    url = emu.start()                      # "http://127.0.0.1:PORT"
    # KAGGLE_API_ENVIRONMENT=LOCALHOST before `import kaggle`, then:
    import kagglesdk.kaggle_env as ke
    ke._env_to_endpoint[ke.KaggleEnv.LOCAL] = url

It also works as an ``HTTP_PROXY`` for ``http://localhost`` (absolute-form request targets).
See ``server.py`` for endpoints, ``scoring.py`` for the public/private split and ``runner.py`` for
how kernels are executed.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import ApiError, EmulatorConfig
from .competition_folder import KINDS, CompetitionSeed, SeedError, expand_files, read_seed, read_solution, write_seed
from .metrics import METRICS, get_metric
from .rerun import EvaluationSpec, Rerunner
from .rpc_competitions import CompetitionService
from .rpc_datasets import DatasetService
from .rpc_kernels import KernelService
from .rpc_models import ModelService
from .runner import KAGGLE_ROOT, MAX_OUTPUT_BYTES, KernelRunner
from .scoring import CompetitionSpec, Metric, SubmissionInvalid, format_score, score_rows, split_solution
from .server import Api, Handler, make_server
from .state import Competition, Store, load_state, save_state

__all__ = ["METRICS", "ApiError", "CompetitionSeed", "Emulator", "Metric", "SeedError", "SubmissionInvalid",
           "format_score", "read_seed", "split_solution"]
SEEDS = "seeds"


class Emulator:
    """An in-memory Kaggle API server on 127.0.0.1, with real kernel runs and submission scoring."""

    def __init__(self, root: Path, username: str = "testuser", key: str = "testkey",
                 kernel_timeout_s: float = 600, score_delay_polls: int = 1, daily_submission_limit: int = 5,
                 dataset_processing_s: float = 0.0, tokens: dict[str, str] | None = None,
                 users: dict[str, str] | None = None, persist: bool = False, input_layout: str = "current",
                 isolation: str = "namespace", kaggle_root: Path | None = KAGGLE_ROOT,
                 max_output_bytes: int = MAX_OUTPUT_BYTES, evaluation_startup_s: float | None = None,
                 evaluation_timeout_s: float | None = None) -> None:
        """Create an emulator keeping its files under ``root``.

        Args:
            root: folder for blobs, dataset versions, kernel runs, zips and ``requests.log``.
            username, key: the legacy API-key credentials accepted as HTTP Basic auth.
            kernel_timeout_s: wall-clock limit of one kernel run (``sessionTimeoutSeconds`` may lower it).
            score_delay_polls: reads (GetSubmission/ListSubmissions) a submission stays PENDING for.
            daily_submission_limit: submissions per user, competition and UTC day; more answer 429.
            dataset_processing_s: seconds a new dataset version stays processing before it is READY.
            tokens: bearer access tokens accepted, mapped to the username they authenticate.
            users: extra ``{username: key}`` pairs accepted besides ``username``/``key``.
            persist: keep datasets, kernels, submissions and uploads in ``root/state.pickle`` across restarts
                (so a user can dry-run a competition week); competitions seeded with a named metric come back
                from ``root/seeds/``.
            input_layout: how kernels see their inputs under ``/kaggle/input``: ``current`` (Kaggle today:
                ``competitions/<slug>/``, ``datasets/<owner>/<slug>/``, ``models/<owner>/<model>/<framework>/
                <variation>/<version>/``) or ``legacy`` (``<slug>/`` for each).
            isolation: ``namespace`` (default; a user + mount + network namespace where ``unshare`` works, else
                ``guard``) or ``guard`` (socket guard, permission bits): see ``runner.py``.
            kaggle_root: where sessions see ``input/`` and ``working/`` when namespaces work and the folder
                exists (default ``/kaggle``); elsewhere they are found through ``KOPS_KAGGLE_INPUT``/``_WORKING``.
            max_output_bytes: a session leaving more than this in ``working/`` ends as ERROR (Kaggle: 20 GiB).
            evaluation_startup_s, evaluation_timeout_s: on an evaluation-API competition's rerun, the gateway's limit
                for the notebook's server to answer, and its per-call timeout (None: the competition package's own,
                15 min and the gateway's). ``emulator.config`` holds both; a test may change them between submissions.
        """
        if input_layout not in ("current", "legacy"):
            raise ValueError(f"input_layout must be 'current' or 'legacy', not {input_layout!r}")
        if isolation not in ("namespace", "guard"):
            raise ValueError(f"isolation must be 'namespace' or 'guard', not {isolation!r}")
        self.root = Path(root)
        self.username = username
        self.config = EmulatorConfig(kernel_timeout_s=float(kernel_timeout_s),
                                     score_delay_polls=int(score_delay_polls),
                                     daily_submission_limit=int(daily_submission_limit),
                                     dataset_processing_s=float(dataset_processing_s), input_layout=input_layout,
                                     evaluation_startup_s=evaluation_startup_s,
                                     evaluation_timeout_s=evaluation_timeout_s)
        self.store = Store(self.root)
        self.runner = KernelRunner(self.store.lock, self.config.kernel_timeout_s, isolation=isolation,
                                   kaggle_root=kaggle_root, max_output_bytes=max_output_bytes)
        services = (DatasetService(self.store, self.config),
                    KernelService(self.store, self.config, self.runner),
                    CompetitionService(self.store, self.config, Rerunner(self.store, self.config, self.runner)),
                    ModelService(self.store, self.config))
        routes: dict[str, Handler] = {}
        for service in services:
            routes.update({rpc: getattr(service, name) for rpc, name in service.routes.items()})
        all_users = {username: key, **(users or {})}
        self.api = Api(self.store, routes, all_users, dict(tokens or {}), self.root / "requests.log")
        self.persist = persist
        if persist:
            load_state(self.store)
            self._restore_seeds()
            self.api.on_change = lambda: save_state(self.store)
        self.url = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # ---- seeding -------------------------------------------------------------------------------

    def add_competition(self, slug: str, files: dict[str, Path], solution: list[dict], id_column: str,
                        target_column: str | Sequence[str], metric: Metric | str,
                        output_file: str = "submission.csv", kind: str = "file",
                        rules_accepted_by: tuple[str, ...] | None = None,
                        evaluation: EvaluationSpec | None = None) -> None:
        """Seed a competition.

        Args:
            slug: competition slug (the kernel input folder is ``input/<slug>/``).
            files: public data files, ``{name in the competition: local path}``; copied into the root.
            solution: rows with at least ``id_column`` and the target column(s); even positions are public.
            id_column, target_column: the submission columns that are matched and scored (one name or several).
            metric: a name from ``metrics.METRICS`` ("accuracy", "rmse", ...) or ``metric(truths, preds) -> float``
                over values aligned by id (strings; tuples of strings with several target columns).
            output_file: default file name for code submissions (and uploads without a name).
            rules_accepted_by: users who have accepted the competition's rules (default: the emulator's user);
                anyone else gets 403 on downloading its files or submitting, as on Kaggle.
            kind: "file" (CSV uploads and notebook outputs) or "code" (notebook outputs only).
            evaluation: an evaluation-API competition's gateway and hidden files: a submitted notebook is rerun
                with its gateway (``rerun.py``) and scored from the ``submission.parquet`` that writes.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        info = get_metric(metric) if isinstance(metric, str) else None
        targets = (target_column,) if isinstance(target_column, str) else tuple(target_column)
        base = self.store.dir("competitions", slug)
        copied = {}
        for name, src in files.items():
            target = base / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if Path(src).resolve() != target.resolve():
                shutil.copyfile(src, target)
            copied[name] = target
        if evaluation is not None:  # the hidden files live beside the public ones, never among them
            hidden = self.store.dir("evaluation", slug)
            for name, src in list(evaluation.data_paths.items()):
                (hidden / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, hidden / name)
                evaluation.data_paths[name] = hidden / name
        rows = [{str(k): "" if v is None else str(v) for k, v in row.items()} for row in solution]
        spec = CompetitionSpec(solution=rows, id_column=id_column, target_columns=targets,
                               metric=info.fn if info else metric,  # type: ignore[arg-type]
                               higher_is_better=info.higher_is_better if info else True)
        with self.store.lock:
            accepted = {self.username} if rules_accepted_by is None else set(rules_accepted_by)
            self.store.competitions[slug] = Competition(slug=slug, files=copied, spec=spec, output_file=output_file,
                                                        kind=kind, rules_accepted=accepted, evaluation=evaluation)

    def accept_rules(self, slug: str, user: str | None = None) -> None:
        """Record that ``user`` (default: the emulator's user) accepted the competition's rules."""
        with self.store.lock:
            self.store.competition(slug).rules_accepted.add(user or self.username)

    def seed_folder(self, folder: Path, slug: str | None = None) -> CompetitionSeed:
        """Seed the competition in ``folder`` (Kaggle's files + ``competition.json``, see ``seed.py``).

        A copy of the seed is kept under ``root/seeds/<slug>/`` so a persistent emulator restarts with it.
        Raises ``SeedError`` naming the file and key when the folder is unusable.
        """
        folder = Path(folder)
        seed = read_seed(folder, slug)
        solution = read_solution(folder, seed)
        files = expand_files(folder, seed.files)
        hidden = [str(p) for p in (seed.evaluation or {}).get("data_paths", [])]  # type: ignore[union-attr]
        evaluation = EvaluationSpec(str(seed.evaluation["gateway"]), {n: folder / n for n in hidden}) \
            if seed.evaluation else None
        self.add_competition(seed.slug, files, solution, seed.id_column, seed.target_columns, seed.metric,
                             seed.output_file, seed.kind, evaluation=evaluation)
        kept = self.root / SEEDS / seed.slug
        if kept.resolve() != folder.resolve():
            for name in (*files, seed.solution, *hidden):
                (kept / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / name, kept / name)
            write_seed(kept, seed)
        return seed

    def _restore_seeds(self) -> None:
        for kept in sorted((self.root / SEEDS).glob("*/competition.json")):
            self.seed_folder(kept.parent)

    def competition_rows(self, slug: str) -> int:
        """How many hidden solution rows competition ``slug`` has."""
        return len(self.store.competition(slug).spec.solution)

    def expected_scores(self, slug: str, submission_rows: list[dict]) -> tuple[str, str]:
        """The (publicScore, privateScore) strings the emulator would give these submission rows.

        Raises ``scoring.SubmissionInvalid`` if the rows would make the submission ERROR.
        """
        comp = self.store.competition(slug)
        rows = [{str(k): "" if v is None else str(v) for k, v in row.items()} for row in submission_rows]
        return score_rows(comp.spec, rows)

    def set_submission_result(self, ref: int, public_score: str | None, private_score: str | None,
                              error: str | None = None) -> None:
        """Replace a submission's result, e.g. hide the private score until the deadline, then reveal it.

        Scores are strings as Kaggle sends them (``"0.66667"``); ``None`` shows as an empty score.
        """
        with self.store.lock:
            sub = self.store.submission(ref)
            sub.public_score, sub.private_score, sub.error = public_score, private_score, error

    # ---- notebook secrets and sessions (what a user does in a notebook's editor) -------------------

    def add_secret(self, label: str, value: str, owner: str | None = None, every_notebook: bool = False) -> None:
        """Add (or replace) the secret ``label`` in ``owner``'s account (default: the emulator's user), as in
        a notebook's Add-ons > Secrets. It reaches no kernel until attached to it (:meth:`attach_secrets`), or, with
        ``every_notebook``, to every notebook of the owner once it exists (``kops emulator start --secret``: a dry
        run's stand-in for attaching it in each notebook's editor; a notebook's first, unrun version is unchanged).
        """
        owner = owner or self.username
        with self.store.lock:
            self.store.secrets.setdefault(owner, {})[label] = value
            if every_notebook:
                self.store.secret_attachments.setdefault((owner, "*"), set()).add(label)

    def attach_secrets(self, kernel: str, labels: Sequence[str]) -> None:
        """Attach the owner's secrets ``labels`` to ``kernel`` (``owner/slug``, which must exist: on Kaggle this
        is done in the notebook's own editor). Sessions started from then on can read them."""
        owner, _, slug = kernel.partition("/")
        with self.store.lock:
            self.store.kernel(owner, slug)  # 404 unless it exists
            missing = [label for label in labels if label not in self.store.secrets.get(owner, {})]
            if missing:
                raise ValueError(f"{owner} has no secret named {', '.join(missing)} (add_secret first)")
            self.store.secret_attachments.setdefault((owner, slug), set()).update(labels)

    def stop_kernel(self, kernel: str, version: int | None = None, reason: str = "cancel") -> bool:
        """End a running session of ``kernel`` (``owner/slug``; ``version`` default: the latest) with all its
        processes: ``cancel`` (the editor's Cancel run: CANCEL_ACKNOWLEDGED) or ``error`` (its machine was lost:
        ERROR). False when that version is not running."""
        owner, _, slug = kernel.partition("/")
        with self.store.lock:
            kv = self.store.kernel(owner, slug).version(version)
        return self.runner.stop_version(kv, reason)

    # ---- control -------------------------------------------------------------------------------

    def inject_fault(self, method_name: str, status: int, times: int = 1, message: str = "",
                     after: bool = False, delay_s: float = 0.0) -> None:
        """Make the next ``times`` calls of an RPC ("CreateDataset" or "service/Method") fail.

        ``status`` is the HTTP status answered (a 429 carries ``Retry-After: 1``; the body is
        ``{"code": status, "message": message or "injected fault N"}``); 0 drops the connection instead.
        ``after=True`` runs the call first (it takes effect) and then fails the response: the case where a
        blind retry of a non-idempotent call would duplicate it. ``delay_s`` sleeps before answering.

        The pseudo-method ``"Upload"`` targets blob PUTs: with 503 the emulator keeps half of the bytes and
        answers 503 (the real client resumes); with 0 it reads half of the body and drops the connection.
        """
        self.api.faults.add(method_name, status, times, message=message, after=after, delay_s=delay_s)

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve in a daemon thread and return the base URL, e.g. ``http://127.0.0.1:PORT``."""
        if self._server is not None:
            return self.url
        self._server = make_server(self.api, host, port)
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        self.api.base_url = self.url
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kaggle-emulator", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and kill running kernels."""
        self.runner.stop()
        if self.persist:
            save_state(self.store)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def state_summary(self) -> dict:
        """A JSON-able snapshot of datasets, kernels, competitions, submissions and open uploads."""
        return self.store.summary()

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
