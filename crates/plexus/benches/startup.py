#!/usr/bin/env python3
"""Start-up time of `plexus serve`: from spawning the process until its MLLP
port accepts a connection, for a new database (created and migrated) and an
existing one. Each start is stopped with SIGTERM. Run from an empty folder:

    python3 crates/plexus/benches/startup.py ./target/release/plexus 15

Prints the median, min and max in milliseconds (docs/benchmarks.md,
"Engine start-up and the ingest path").
"""
import socket, subprocess, sys, time, os, shutil, statistics, signal
binary = sys.argv[1]; runs = int(sys.argv[2])
conf = """version = 1
[store]
url = "sqlite://data/plexus.db"
[api]
listen = "127.0.0.1:18190"
[channels.adt-in.source]
type = "mllp"
listen = "127.0.0.1:12590"
[[channels.adt-in.destinations]]
name = "archive"
type = "file"
directory = "out"
"""
open("plexus.toml", "w").write(conf)
def once(fresh):
    if fresh: shutil.rmtree("data", ignore_errors=True)
    t0 = time.perf_counter()
    p = subprocess.Popen([binary, "serve", "--config", "plexus.toml"], stderr=subprocess.DEVNULL)
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", 12590), timeout=1); s.close(); break
        except OSError:
            time.sleep(0.0005)
    dt = (time.perf_counter() - t0) * 1000
    p.send_signal(signal.SIGTERM); p.wait()
    return dt
for fresh in (True, False):
    xs = [once(fresh) for _ in range(runs)]
    print(f"{'new database' if fresh else 'existing database'}: median {statistics.median(xs):.1f} ms, min {min(xs):.1f}, max {max(xs):.1f} over {runs} starts")
