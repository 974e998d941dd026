"""Competition RPCs (``competitions.CompetitionApiService``): files, submissions and scoring."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from .common import ApiError, EmulatorConfig, Redirect, RpcContext, iso, page_of, utc_now
from .rerun import Rerunner
from .scoring import SubmissionInvalid, score_bytes
from .state import Competition, Store, Submission

Body = dict[str, Any]

_SCORE_SORTS = {"SUBMISSION_SORT_BY_PUBLIC_SCORE": "public_score", "SUBMISSION_SORT_BY_PRIVATE_SCORE": "private_score"}


def _sort_key(sort_by: str, higher_is_better: bool) -> Callable[[Submission], tuple] | None:
    """Best score first (highest, or lowest for a lower-is-better metric), unscored last; or by file name."""
    if sort_by == "SUBMISSION_SORT_BY_NAME":
        return lambda s: (s.file_name,)
    attr = _SCORE_SORTS.get(sort_by)
    if attr is None:
        return None
    sign = -1.0 if higher_is_better else 1.0

    def key(sub: Submission) -> tuple:
        value = getattr(sub, attr)
        return (1, 0.0) if not value else (0, sign * float(value))

    return key


class CompetitionService:
    """Handlers for competition data, file and code submissions, and submission listings."""

    routes = {
        "competitions.CompetitionApiService/ListDataFiles": "list_data_files",
        "competitions.CompetitionApiService/DownloadDataFile": "download_data_file",
        "competitions.CompetitionApiService/DownloadDataFiles": "download_data_files",
        "competitions.CompetitionApiService/StartSubmissionUpload": "start_submission_upload",
        "competitions.CompetitionApiService/CreateSubmission": "create_submission",
        "competitions.CompetitionApiService/CreateCodeSubmission": "create_code_submission",
        "competitions.CompetitionApiService/GetSubmission": "get_submission",
        "competitions.CompetitionApiService/ListSubmissions": "list_submissions",
        "competitions.CompetitionApiService/GetSubmissionLimits": "get_submission_limits",
        "competitions.CompetitionApiService/ListCompetitions": "list_competitions",
    }

    def __init__(self, store: Store, config: EmulatorConfig, rerunner: Rerunner | None = None) -> None:
        self.store = store
        self.config = config
        self.rerunner = rerunner

    # ---- data files ----------------------------------------------------------------------------

    def list_data_files(self, ctx: RpcContext, body: Body) -> Body:
        """The competition's public files, paged by ``pageToken``."""
        comp = self.store.competition(str(body.get("competitionName", "")))
        files = [{"ref": name, "name": name, "totalBytes": path.stat().st_size, "creationDate": iso(comp.created),
                  "url": f"{ctx.base_url}/files/competitions/{comp.slug}/{name}"}
                 for name, path in sorted(comp.files.items())]
        page, nxt = page_of(files, body.get("pageSize"), body.get("pageToken"))
        return {"files": page, "nextPageToken": nxt}

    def download_data_file(self, ctx: RpcContext, body: Body) -> Redirect:
        """302 to one competition file (403 until the caller accepted the rules)."""
        comp = self._accepted(ctx, str(body.get("competitionName", "")))
        name = str(body.get("fileName", ""))
        if name not in comp.files:
            raise ApiError(404, f"File {name!r} not found in competition {comp.slug}")
        return Redirect(f"{ctx.base_url}/files/competitions/{comp.slug}/{name}")

    def download_data_files(self, ctx: RpcContext, body: Body) -> Redirect:
        """302 to a zip of all competition files (the client saves it as ``<slug>.zip``); 403 without the rules."""
        comp = self._accepted(ctx, str(body.get("competitionName", "")))
        self.store.zip_of(dict(comp.files), "competitions", comp.slug, f"{comp.slug}.zip")
        return Redirect(f"{ctx.base_url}/files/zips/competitions/{comp.slug}/{comp.slug}.zip")

    def _accepted(self, ctx: RpcContext, slug: str) -> Competition:
        """The competition, or 403 as Kaggle answers a user who has not accepted its rules."""
        comp = self.store.competition(slug)
        if ctx.user not in comp.rules_accepted:
            raise ApiError(403, f"You must accept this competition's rules before you can use its data or submit: "
                                f"{ctx.base_url}/competitions/{comp.slug}/rules")
        return comp

    def list_competitions(self, ctx: RpcContext, body: Body) -> Body:
        """Every seeded competition."""
        return {"competitions": [
            {"id": i + 1, "ref": f"{ctx.base_url}/competitions/{slug}", "title": slug,
             "url": f"{ctx.base_url}/competitions/{slug}", "maxDailySubmissions": self.config.daily_submission_limit,
             "enabledDate": iso(c.created), "deadline": iso(c.created + timedelta(days=365))}
            for i, (slug, c) in enumerate(sorted(self.store.competitions.items()))]}

    # ---- submissions ---------------------------------------------------------------------------

    def start_submission_upload(self, ctx: RpcContext, body: Body) -> Body:
        """Open an upload session for a submission file."""
        comp = self.store.competition(str(body.get("competitionName", "")))
        name = str(body.get("fileName") or comp.output_file)
        blob = self.store.new_blob(name, int(body.get("contentLength") or 0), "INBOX")
        return {"token": blob.token, "createUrl": f"{ctx.base_url}/upload/{blob.token}"}

    def create_submission(self, ctx: RpcContext, body: Body) -> Body:
        """Score an uploaded CSV (``blobFileTokens`` is one token string)."""
        comp = self._accepted(ctx, str(body.get("competitionName", "")))
        if comp.kind == "code":
            raise ApiError(400, f"{comp.slug} is a code competition: submissions must come from a notebook's "
                                "output (CreateCodeSubmission), not an uploaded file")
        self._check_limit(comp, ctx.user)
        blob = self.store.complete_blob(str(body.get("blobFileTokens", "")))
        sub = self._submit(comp, ctx.user, blob.name, blob.path.read_bytes(), body.get("submissionDescription"))
        return {"message": "Successfully submitted to " + comp.slug, "ref": sub.ref}

    def create_code_submission(self, ctx: RpcContext, body: Body) -> Body:
        """Submit an output file of a COMPLETE, internet-off kernel version attached to the competition."""
        comp = self._accepted(ctx, str(body.get("competitionName", "")))
        owner, slug = str(body.get("kernelOwner") or ctx.user), str(body.get("kernelSlug", ""))
        kernel = self.store.kernel(owner, slug)
        kv = kernel.version(int(body["kernelVersion"]) if body.get("kernelVersion") else None)
        name = str(body.get("fileName") or comp.output_file)
        where = f"Notebook {kernel.ref} version {kv.number}"
        if kv.status != "COMPLETE":
            raise ApiError(400, f"{where} has status {kv.status}; only a successfully completed run can be submitted")
        if comp.slug not in (kv.setting("competitionDataSources") or []):
            raise ApiError(400, f"{where} does not have competition {comp.slug} attached as a data source")
        if kv.setting("enableInternet", False):
            raise ApiError(400, f"{where} has internet enabled; code competition submissions need internet off")
        if name not in kv.outputs:
            raise ApiError(400, f"{where} did not produce output file {name!r} "
                                f"(outputs: {', '.join(kv.outputs) or 'none'})")
        self._check_limit(comp, ctx.user)
        data = (kv.working / name).read_bytes()
        if comp.evaluation is not None and self.rerunner is not None:  # scored by its gateway on the hidden rerun
            sub = self._pending(comp, ctx.user, name, data, body.get("submissionDescription"),
                                f"{kernel.ref}/{kv.number}")
            self.rerunner.start(kv, kernel.slug, comp, sub)
            return {"message": "Successfully submitted to " + comp.slug, "ref": sub.ref}
        sub = self._submit(comp, ctx.user, name, data, body.get("submissionDescription"),
                           kernel=f"{kernel.ref}/{kv.number}")
        return {"message": "Successfully submitted to " + comp.slug, "ref": sub.ref}

    def _check_limit(self, comp: Competition, user: str) -> None:
        used = self._num_today(comp, user)
        if used >= self.config.daily_submission_limit:
            now = utc_now()
            midnight = datetime(now.year, now.month, now.day) + timedelta(days=1)
            wait = max(1, int((midnight - now).total_seconds()))
            raise ApiError(429, f"Daily submission limit of {self.config.daily_submission_limit} "
                                f"reached for {comp.slug}; try again after 00:00 UTC",
                           {"Retry-After": str(wait)})

    def _num_today(self, comp: Competition, user: str) -> int:
        today = utc_now().date()
        return sum(1 for s in self.store.submissions.values()
                   if s.competition == comp.slug and s.user == user and s.date.date() == today)

    def _pending(self, comp: Competition, user: str, file_name: str, data: bytes, description: object,
                 kernel: str) -> Submission:
        ref = self.store.next_submission_ref()
        (self.store.dir("submissions", str(ref)) / file_name).write_bytes(data)
        sub = Submission(ref=ref, competition=comp.slug, user=user, file_name=file_name, total_bytes=len(data),
                         description=str(description) if description else None, public_score=None,
                         private_score=None, error=None, polls_left=max(0, self.config.score_delay_polls),
                         kernel=kernel, running=True)
        self.store.submissions[ref] = sub
        return sub

    def _submit(self, comp: Competition, user: str, file_name: str, data: bytes, description: object,
                kernel: str | None = None) -> Submission:
        public = private = error = None
        try:
            public, private = score_bytes(comp.spec, data)
        except SubmissionInvalid as e:
            error = str(e)
        ref = self.store.next_submission_ref()
        (self.store.dir("submissions", str(ref)) / file_name).write_bytes(data)
        sub = Submission(ref=ref, competition=comp.slug, user=user, file_name=file_name, total_bytes=len(data),
                         description=str(description) if description else None, public_score=public,
                         private_score=private, error=error, polls_left=max(0, self.config.score_delay_polls),
                         kernel=kernel)
        self.store.submissions[ref] = sub
        return sub

    # ---- reads ---------------------------------------------------------------------------------

    def get_submission(self, ctx: RpcContext, body: Body) -> Body:
        """One submission; each read counts towards revealing its score."""
        sub = self.store.submission(int(body.get("ref") or 0))
        if sub.user != ctx.user:
            raise ApiError(403, f"Submission {sub.ref} belongs to another user")
        return self._view(sub, ctx)

    def list_submissions(self, ctx: RpcContext, body: Body) -> Body:
        """The caller's submissions, newest first (or ``sortBy``), paged by ``pageSize``/``pageToken``."""
        comp = self.store.competition(str(body.get("competitionName", "")))
        subs = [s for s in self.store.submissions.values() if s.competition == comp.slug and s.user == ctx.user]
        subs.sort(key=lambda s: -s.ref)
        key = _sort_key(str(body.get("sortBy") or ""), comp.spec.higher_is_better)
        if key is not None:
            subs.sort(key=key)
        if body.get("group") == "SUBMISSION_GROUP_SUCCESSFUL":
            subs = [s for s in subs if s.status == "COMPLETE"]
        size = int(body.get("pageSize") or 20)
        token = body.get("pageToken") or (str((int(body["page"]) - 1) * size) if body.get("page") else "")
        page, nxt = page_of(subs, size, token)
        return {"submissions": [self._view(s, ctx) for s in page], "nextPageToken": nxt}

    def get_submission_limits(self, ctx: RpcContext, body: Body) -> Body:
        """Submissions used today / in total, and how many more are allowed today."""
        comp = self.store.competition(str(body.get("competitionName", "")))
        today = self._num_today(comp, ctx.user)
        total = sum(1 for s in self.store.submissions.values() if s.competition == comp.slug and s.user == ctx.user)
        return {"numToday": today, "numTotal": total,
                "numAllowedNow": max(0, self.config.daily_submission_limit - today), "limitedByTotal": False}

    def _view(self, sub: Submission, ctx: RpcContext) -> Body:
        """ApiSubmission JSON; the read itself brings the submission closer to being scored."""
        if sub.polls_left > 0:
            status = "PENDING"
            sub.polls_left -= 1
        else:
            status = sub.status
        out: Body = {
            "ref": sub.ref, "totalBytes": sub.total_bytes, "date": iso(sub.date), "description": sub.description,
            "fileName": sub.file_name, "status": status, "submittedBy": sub.user, "submittedByRef": sub.user,
            "teamName": sub.user, "url": f"{ctx.base_url}/competitions/{sub.competition}/submissions#{sub.ref}",
            "publicScore": "", "privateScore": "",
        }
        if status == "COMPLETE":
            out["publicScore"], out["privateScore"] = sub.public_score, sub.private_score
        elif status == "ERROR":
            out["errorDescription"] = sub.error
        return out
