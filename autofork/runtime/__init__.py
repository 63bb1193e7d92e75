"""autofork's runtime: where forked calls run and how their results come back.

    fork(f, x) ─ api.start ─> Task ─> executor ─> ProcessPool ══ worker processes (cpu)
        │       (or implicit.fork           │      ThreadPool (io), EventLoopThread (async)
        │        ─> granularity.call)       │      DaskBackend (cpu, on a cluster)
        └──> ResultProxy ── waits for ──> Task ─> value, or the call's exception re-raised

Layers, bottom up; each imports only from below (``tests/test_layers.py`` checks it):

0. ``errors`` ``serialize`` ``marks`` ``config`` ``stats`` ``plain`` ``output``
   ``notices`` ``freshness``: exceptions, pickling, marks, settings, figures
1. ``task`` (the future) and ``executor`` (the contract of what runs tasks)
2. ``proxy`` ``dataflow`` ``lazy`` ``settle``: values that are not there yet
3. ``processes`` / ``worker`` (the process pool, both sides), ``template`` (the clean
   process workers are forked from), ``threads``, ``aio``,
   ``dask_backend``, ``folds``: the executors
4. ``engine``: which executors run, started on first use; the end of the program
5. ``api`` (the public functions), ``granularity`` (inline, chunk or fork, by cost),
   ``implicit`` (what rewritten code calls)

docs/architecture.md follows one fork through these modules and back.
"""
