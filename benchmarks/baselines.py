"""The physical floors, for the scripts in this folder: they live in ``forge_core.bench.floors``
so that ``forge bench`` has them in an installed package too."""

from forge_core.bench.floors import (  # noqa: F401
    EchoServer, bulk_gbps, gather_us, median, memcpy_gbps, percentile, ping_pong_us,
)
