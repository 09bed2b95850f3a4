"""The synthetic world the demo and the tests run against.

Among its modules: `schema` is the demo CRM, `generate` fills it deterministically from a seed
(`seed_world`, `python -m compliance_dev world seed`), and `objects` writes the object stores the
data map names (logs, backups, call recordings). Import the submodules directly: this package
imports nothing, so reading `schema` stays cheap.
"""
