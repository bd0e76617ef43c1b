"""Put this directory first on PYTHONPATH to run a process as if hiredis were not installed
(redis-py then parses replies in pure Python): `--variant "no hiredis:PYTHONPATH=bench/variants/no_hiredis"`."""

raise ImportError("hiredis is hidden by bench/variants/no_hiredis")
