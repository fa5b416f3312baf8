"""Dask workers made fit for XLA (sweep.cluster): core shares per machine, glibc's malloc, local writes."""

import os

import pytest

from sweep.cluster import plan_shares, prepare_workers
from sweep.results import local_writes

ME = ("client-host", 100)


def view(*workers):
    """A client.run(process_view) answer: (address, host, pid, cores) per worker."""
    return {addr: (host, pid, tuple(cores)) for addr, host, pid, cores in workers}


def test_two_worker_processes_on_a_machine_get_disjoint_halves_of_its_cores():
    v = view(("tcp://a:1", "n1", 11, range(4)), ("tcp://a:2", "n1", 12, range(4)))
    assert plan_shares(v, ME) == {"tcp://a:1": [0, 2], "tcp://a:2": [1, 3]}


def test_more_worker_processes_than_cores_share_one_core_each():
    v = view(*[(f"tcp://a:{k}", "n1", 10 + k, (0, 1)) for k in range(4)])
    assert plan_shares(v, ME) == {"tcp://a:0": [0], "tcp://a:1": [1], "tcp://a:2": [0], "tcp://a:3": [1]}


def test_each_machine_is_shared_out_on_its_own():
    v = view(("tcp://a:1", "n1", 11, range(2)), ("tcp://a:2", "n1", 12, range(2)),
             ("tcp://b:1", "n2", 11, range(8)))  # n2: one worker process keeps every core
    assert plan_shares(v, ME) == {"tcp://a:1": [0], "tcp://a:2": [1]}


def test_workers_in_the_clients_process_or_already_pinned_are_left_alone():
    inside = view(("inproc://1", *ME, range(2)), ("inproc://2", *ME, range(2)))
    assert plan_shares(inside, ME) == {}
    chosen = view(("tcp://a:1", "n1", 11, (0,)), ("tcp://a:2", "n1", 12, (1,)))  # someone pinned them
    assert plan_shares(chosen, ME) == {}
    one_core = view(("tcp://a:1", "n1", 11, (0,)), ("tcp://a:2", "n1", 12, (0,)))
    assert plan_shares(one_core, ME) == {}


def test_several_threads_of_one_worker_process_count_once():
    v = view(("tcp://a:1", "n1", 11, range(2)), ("tcp://a:2", "n1", 11, range(2)))  # one process, two addresses
    assert plan_shares(v, ME) == {}


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two cores")
def test_a_two_process_local_cluster_computes_on_disjoint_cores_with_glibc_malloc_thresholds():
    from distributed import Client, LocalCluster

    from sweep.cluster import tune_malloc

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        plan = prepare_workers(client)
        cores = client.run(lambda: tuple(sorted(os.sched_getaffinity(0))))
        assert len(plan) == 2 and set(cores.values()) == {tuple(c) for c in plan.values()}
        a, b = cores.values()
        assert not set(a) & set(b)
        # dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_; the thresholds were set there
        assert all(client.run(lambda: "MALLOC_TRIM_THRESHOLD_" in os.environ).values())
        assert all(client.run(tune_malloc, ("elsewhere", -1)).values())


def test_result_files_are_written_with_a_local_lock_while_a_distributed_client_is_the_default():
    from distributed import Client, LocalCluster
    from xarray.backends.locks import get_write_lock

    def distributed_lock():
        return type(get_write_lock("results.nc")).__module__.startswith("distributed")

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster):
        assert distributed_lock()  # xarray would take the cluster's lock, a round trip per variable
        with local_writes():
            assert not distributed_lock()
