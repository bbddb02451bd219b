"""Driving a Flower strategy outside Flower: the task identity its Messages are stamped with, a
grid that only lists nodes, and one that runs the real ClientApp handler in this process (the real
ServerApp loop without Ray, which takes ~20-30 s to start here). Shared by the strategy,
server-optimiser and bytes tests."""

import pytest
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture(autouse=True)
def _task_identity():
    # Messages are stamped with the task running them; outside Flower we play that task.
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


class Grid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


class InProcessGrid:
    """Flower's Grid as Strategy.start uses it, with the ClientApp's handler run in this process."""

    def __init__(self, n, threads=1):
        from flwr.app import Context, RecordDict

        self.ctx = {
            10 + i: Context(
                run_id=1,
                node_id=10 + i,
                node_config={"partition-id": i, "num-partitions": n, "threads": threads},
                state=RecordDict(),
                run_config={},
            )
            for i in range(n)
        }

    def get_node_ids(self):
        return list(self.ctx)

    def send_and_receive(self, messages, *, timeout=None):
        from decentdiff.federated.client_app import train_handler

        return [train_handler(m, self.ctx[m.metadata.dst_node_id]) for m in messages]


def serve_in_process(run_dir, *, clients, hooks=None, batch=8, sets=(), **options):
    """A federation of ``clients`` on digits with the tiny UNet at ``batch`` (``sets``: --set
    items; ``options``: the
    FedSettings fields, e.g. method, rounds, local_steps, quantize), run through the real
    ServerApp loop (`server_app.serve`) and ClientApp handler in this process; returns the
    settings. Calling it again on the same RUN resumes. Each client trains on as many torch
    threads as `fed run`'s simulation gives it (the CPUs over the clients run at once), so a
    twin of a Ray federation is bitwise comparable on any machine."""
    import os

    from decentdiff import config as C
    from decentdiff.federated.server_app import serve
    from decentdiff.federated.settings import FedSettings, build_settings, fed_base
    from decentdiff.federated.store import record_settings
    from decentdiff.run import load_data

    cfg = C.resolve(base=fed_base(), sets=list(sets))
    cfg.data.source, cfg.model.preset, cfg.train.batch = "digits", "tiny", batch
    d = load_data(cfg.data)
    cpus = os.cpu_count() or 1
    threads = max(1, cpus // max(1, min(cpus, clients)))  # as federated/simulation.py
    options = FedSettings(clients=clients, client_threads=threads, **options).validate()
    s = build_settings(cfg, options, image_shape=d.shape, num_classes=d.num_classes,
                       run_dir=str(run_dir))  # fmt: skip
    record_settings(run_dir, s)
    serve(InProcessGrid(clients, threads), s, **(hooks or {}))
    return s
