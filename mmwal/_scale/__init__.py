"""Past one host: published versions on object storage, remote readers, sharding.

Writers stay on one host (the log needs a local filesystem and its locks);
what scales out is the read side and ingestion by sharding
(docs/scale-out.md).  ``_fs`` names and checks the files of a published
version, ``publish`` uploads them, ``remote`` serves them from a local cache,
``sharded`` fans a search out over shard stores.
"""
