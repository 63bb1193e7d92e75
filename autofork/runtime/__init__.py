"""autofork's runtime: where forked calls run and how their results come back.

    api.fork ──> Task ──> executor: processes.ProcessPool (cpu; or a cluster)
       │                            threads.ThreadPool    (io)
       │                            aio.EventLoopThread   (async)
       └──> proxy.ResultProxy ── waits on ──> Task ──> value, or errors.Failure re-raised

Modules: ``api`` (public functions), ``task`` (the future), ``proxy`` (the lazy value),
``lazy`` (lazy operators), ``dataflow`` (pending inputs), ``errors`` (exceptions and
traceback transport), ``marks``, ``config``, ``engine`` (pools in use, exit handling),
``backend`` / ``local`` (where CPU work runs), ``processes`` / ``worker`` (the process
pool, both sides), ``threads``, ``aio``, ``implicit`` (what rewritten code calls).
"""
