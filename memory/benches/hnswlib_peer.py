"""The peer of memory_bench: hnswlib (and numpy's exact scan) on the same vectors, same run.

    python hnswlib_peer.py VECTORS QUERIES DIM [THREADS]

VECTORS and QUERIES are raw little-endian f32 matrices (rows of DIM values) written by
memory_bench. Prints `peer <name> <value>` lines that memory_bench reads back: build rate on
THREADS threads (M 16, ef_construction 200), one-thread query latency p50/p99 and recall@10
against numpy's exact top 10 for ef 32/64/96, and numpy's exact scan per query.
Needs `pip install hnswlib numpy` (checked with hnswlib 0.8.0, numpy 2.4).
"""
import sys
import time

import hnswlib
import numpy as np


def main():
    vec_path, q_path, dim = sys.argv[1], sys.argv[2], int(sys.argv[3])
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    data = np.fromfile(vec_path, dtype="<f4").reshape(-1, dim)
    queries = np.fromfile(q_path, dtype="<f4").reshape(-1, dim)
    n = data.shape[0]
    print(f"peer version hnswlib {getattr(hnswlib, '__version__', '0.8.0')} numpy {np.__version__}")

    lat = []
    truth = []
    for q in queries:
        t = time.perf_counter()
        s = data @ q
        top = np.argpartition(-s, 10)[:10]
        lat.append(time.perf_counter() - t)
        truth.append(set(top.tolist()))
    lat.sort()
    print(f"peer exact_p50_ms {lat[len(lat) // 2] * 1e3:.3f}")
    print(f"peer exact_p99_ms {lat[int(round((len(lat) - 1) * 0.99))] * 1e3:.3f}")

    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, M=16, ef_construction=200, random_seed=1)
    index.set_num_threads(threads)
    t = time.perf_counter()
    index.add_items(data, np.arange(n))
    build = time.perf_counter() - t
    print(f"peer build_per_s {n / build:.0f}")
    index.set_num_threads(1)
    for ef in (32, 64, 96):
        index.set_ef(ef)
        lat = []
        found = 0
        for q, tr in zip(queries, truth):
            t = time.perf_counter()
            labels, _ = index.knn_query(q, k=10)
            lat.append(time.perf_counter() - t)
            found += len(tr.intersection(labels[0].tolist()))
        lat.sort()
        print(f"peer ef{ef}_recall {found / (10 * len(queries)):.3f}")
        print(f"peer ef{ef}_p50_ms {lat[len(lat) // 2] * 1e3:.3f}")
        print(f"peer ef{ef}_p99_ms {lat[int(round((len(lat) - 1) * 0.99))] * 1e3:.3f}")


if __name__ == "__main__":
    main()
