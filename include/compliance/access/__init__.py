"""Access requests ("right to know"): everything we hold about a consumer, as a bundle the
business can hand over (R8-R15, R7, R27, G2, G3).

The DAG `access_reports` calls, in order:

- `plan` (`batch`): one batch of every open access request; identities resolved within each
  client's tenant (`compliance.requests.resolve`, shared with deletion), windows (R9, G2), repeats
  (R7);
- `gather_system` / `gather_log_shard` (`gather`): one pass per SQL system and per log day,
  records per request into encrypted parts; withheld values never leave the store (R10);
- `gather_backup_shard` (`gather_backups`, `snapshots`): one backup snapshot day, loaded into a
  temporary SQLite file and gathered the same way, unless the map declares the store not
  searched with R13's four conditions;
- `build_bundles` (`deliver`): report (`report`, `disclosure`), zip (`bundle`, `render`), upload
  with server-side encryption, an expiring link (R12), receipt, ledger entry, requests closed.
  Every value and every text member passes the R10 scanner (`r10`: SSNs, cards, accounts,
  government and medical ids found anywhere), with withholding per jurisdiction (G2); what is
  withheld or denied is stated with its legal basis (`partial`, R14).

Intake is the shared inbox (`compliance.requests.inbox`): access documents arrive exactly like
deletions.
How to run it and read its outputs: docs/access.md.
"""

from compliance.access.batch import AccessBatch, audio_setting, plan
from compliance.access.deliver import MAX_LINK_DAYS, LinkExpiryRefused, build_bundles, link_lifetime
from compliance.access.gather import gather_log_shard, gather_system
from compliance.access.gather_backups import gather_backup_shard

__all__ = [
    "MAX_LINK_DAYS",
    "AccessBatch",
    "LinkExpiryRefused",
    "audio_setting",
    "build_bundles",
    "gather_backup_shard",
    "gather_log_shard",
    "gather_system",
    "link_lifetime",
    "plan",
]
