"""Tracking-store sync through a bucket: the offline-first mode (free notebooks as compute, one bucket).

Each machine logs to its own local MLflow store. ``push`` writes each local run under a prefix only that run owns,
``runs/<machine-id>/<run-id>/``, so two machines pushing at once never write the same object (no reliance on
object preconditions):

- ``meta.json`` (format ``kops.run-bundle/2``): name, status, times, artifact URI, params, tags, and the ordered
  list of the run's metric chunks. Small; rewritten when the run changed.
- ``m-<seq>-<md5>.json``: append-only chunks of metric points. A push uploads only the points logged since the
  run's last push; the union of a run's chunks is its metric history (a point may appear in two chunks, never
  missing from all).

Cost follows the change: ``push`` decides from what the store lists without reading any history (status, end
time, each metric's latest step/timestamp/value, params, tags — the run's fingerprint) which runs changed since
their last push, kept in ``.kops/sync-state.json``; only those are read and uploaded. A run's new points are
those after the pushed prefix of its history (by timestamp), checked by count and digest; a history that no longer
starts with the pushed prefix (a point logged with an older timestamp) is uploaded whole as one more chunk. A point
logged at an earlier step than a metric's latest leaves the fingerprint unchanged: it goes up with the run's next
change, or with ``push(full=True)`` (`kops sync push --full`), which reads every run's history. Pushes from one
folder take a file lock, so a background push and `kops sync push` never interleave.

``pull`` imports other machines' runs through the tracking adapter in bulk (``log_batch``: 1,000 entities a call):
matched by the ``kops.origin_run_id`` tag, a second pull creates nothing (a run whose ``meta.json`` MD5 equals its
``kops.origin_md5`` tag is skipped without a download), and a run that grew gets the chunks it has not imported
(tag ``kops.origin_chunks``), deduplicated against its stored points. Imported runs are never pushed back.
Bundles of the first format (one ``runs/<machine>/<run-id>.json`` holding the whole history) are still pulled,
unless the same run also has a ``meta.json``.

Bucket lookup order: ``--bucket`` > ``KOPS_BUCKET`` > ``storage.bucket`` in kops.yaml.

Modules: :mod:`~kaggleops.sync.bundle` (formats, listing, fingerprints), :mod:`~kaggleops.sync.state` (bucket, machine
id, state file, lock), :mod:`~kaggleops.sync.push`, :mod:`~kaggleops.sync.pull`, :mod:`~kaggleops.sync.background`.
"""

from kaggleops.sync.background import BackgroundSync, background_sync
from kaggleops.sync.bundle import BUNDLE_FORMAT, CHUNK_FORMAT, PullResult, PushResult, encode, fingerprint
from kaggleops.sync.pull import bundles, pull, pull_if_configured
from kaggleops.sync.push import push
from kaggleops.sync.state import ENV_BUCKET, STATE_FILE, bucket_url, machine_id

__all__ = ["BUNDLE_FORMAT", "CHUNK_FORMAT", "ENV_BUCKET", "STATE_FILE", "BackgroundSync", "PullResult", "PushResult",
           "background_sync", "bucket_url", "bundles", "encode", "fingerprint", "machine_id", "pull",
           "pull_if_configured", "push"]
