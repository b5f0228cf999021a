"""Batch on a real two-node Ray cluster, started as docs/batch.md says: ``ray start --head --block``
and ``ray start --address ... --block`` on this machine, with token authentication (the token in
``~/.ray/auth_token`` of a temporary HOME), a batch through ``--ray 127.0.0.1:PORT`` in a child
process, bad addresses and tokens, and the second node lost mid-batch.

Every process the cluster starts is in the process group of one of the two ``ray start``
commands, or carries the temporary HOME in its environment: the fixture stops those, by their
ids, also when a test fails (never ``ray stop``, which would stop every Ray on the machine)."""
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import cv2
import pytest

from fer_server.config import Config
from fer_server.offline.batch import run_batch
from tests.test_batch import make_folder, read_csv, summary

ray = pytest.importorskip("ray", reason="Ray is in requirements-ray.txt; pip install -r requirements-ray.txt")

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
ENV_DROPPED = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")
NODE2 = "FER_TEST_RAY_NODE2"  # in the environment of the second node's processes, its workers included


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def ours(marker):
    """Ids of the live processes whose environment holds ``marker`` (the cluster's HOME)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes() and \
                        (entry / "stat").read_text().split(")")[-1].split()[0] != "Z":
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def stop_group(process, grace_s=10):
    """SIGTERM to the process group of ``process`` (a ``ray start --block``), then SIGKILL."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


class Cluster:
    """A head node and a second node, each one ``ray start ... --block`` in its own session."""

    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are limited
        self.home = os.path.join(self.base, "h")
        os.mkdir(self.home)
        self.env = {k: v for k, v in os.environ.items() if k not in ENV_DROPPED}
        self.env["HOME"] = self.home
        self.port, *self.other_ports = free_ports(11)
        self.processes = {}

    def start(self, name, *args, env=None):
        ports = self.other_ports[:5] if name == "head" else self.other_ports[5:10]
        log = open(os.path.join(self.base, f"{name}.log"), "w")
        command = [RAY, "start", "--block", "--num-cpus", "1", "--temp-dir", os.path.join(self.base, name),
                   "--disable-usage-stats", "--object-store-memory", str(100 << 20),
                   "--dashboard-agent-listen-port", str(ports[0]), "--dashboard-agent-grpc-port", str(ports[1]),
                   "--metrics-export-port", str(ports[2]), "--runtime-env-agent-port", str(ports[3]), *args]
        if name == "head":
            command += ["--ray-client-server-port", str(ports[4])]
        self.processes[name] = subprocess.Popen(command, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in self.log(name):
            assert self.processes[name].poll() is None and time.monotonic() < deadline, self.log(name)[-3000:]
            time.sleep(0.3)

    def log(self, name):
        return Path(self.base, f"{name}.log").read_text(errors="replace")

    def driver(self, *args, env=None, **kwargs):
        """``python main.py ARGS`` with the cluster's HOME and no RAY_AUTH_* variable, in a child process."""
        return subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT, env=env or self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)

    def stop(self):
        """Stop both nodes through the processes this started; kill what is left of theirs; the leftovers."""
        for process in reversed(list(self.processes.values())):
            stop_group(process)
        for pid in ours(f"HOME={self.home}\0"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
        return ours(f"HOME={self.home}\0")


@pytest.fixture(scope="module")
def cluster():
    """Token authentication as Ray 2.61 has by default: `ray get-auth-token --generate`, then the head
    (which finds ~/.ray/auth_token by itself) and a second node (``RAY_AUTH_MODE=token``, as
    docs/batch.md says for nodes that join)."""
    cluster = Cluster()
    try:
        subprocess.run([RAY, "get-auth-token", "--generate"], env=cluster.env, check=True, capture_output=True,
                       timeout=60)
        assert Path(cluster.home, ".ray", "auth_token").is_file()
        cluster.start("head", "--head", "--port", str(cluster.port), "--include-dashboard", "false")
        assert "Token authentication is enabled" in cluster.log("head")
        cluster.start("node2", "--address", f"127.0.0.1:{cluster.port}",
                      env={**cluster.env, "RAY_AUTH_MODE": "token", NODE2: "1"})
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.base, ignore_errors=True)


@pytest.fixture(scope="module")
def config(tiny_model_files):
    return Config(model_path=tiny_model_files[0], weights_path=tiny_model_files[1])


@pytest.fixture(scope="module")
def model_args(tiny_model_files):
    return ["--model", str(tiny_model_files[0]), "--weights", str(tiny_model_files[1])]


def without_seconds(path):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(path)]


def test_two_node_batch_gives_the_pools_files(cluster, tmp_path, clip, config, model_args):
    videos = make_folder(tmp_path, clip)
    started = time.perf_counter()
    driver = cluster.driver("--source", str(videos), "--csv-dir", str(tmp_path / "ray"), "--ray",
                            f"127.0.0.1:{cluster.port}", *model_args)
    pooled = run_batch(videos, tmp_path / "pool", workers=1, config=config, progress=False, out=io.StringIO())
    out, err = driver.communicate(timeout=240)
    wall = time.perf_counter() - started
    print(f"two-node batch: {wall:.1f} s wall (the pool run beside it included)\n{out}")
    assert pooled == 1 and driver.returncode == 1, err[-3000:]  # two videos are errors, on both
    assert "3 videos ok, 2 errors, 0 skipped" in out and ", ray)" in out
    assert "Unauthenticated" not in err and "InvalidAuthToken" not in err
    for name in ("a.csv", "sub/b.csv", "sub/plain.csv"):
        assert read_csv(tmp_path / "ray" / name) == read_csv(tmp_path / "pool" / name)
    assert without_seconds(tmp_path / "ray" / "summary.csv") == without_seconds(tmp_path / "pool" / "summary.csv")
    assert summary(tmp_path / "ray")["broken.mp4"]["error"]
    actors = [p for p in Path(cluster.base, "node2").rglob("*.out") if "MapWorker" in p.read_text(errors="replace")]
    assert actors, "no actor ran on the second node"


def fake_gcs(ray_version):
    """A gRPC server answering the GCS's key-value Get with cluster metadata of another Ray version."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    class KV(gcs_service_pb2_grpc.InternalKVGcsServiceServicer):
        def InternalKVGet(self, request, context):
            metadata = {"ray_version": ray_version, "python_version": "3.11.7"}
            return gcs_service_pb2.InternalKVGetReply(value=json.dumps(metadata).encode())

    server = grpc.server(futures.ThreadPoolExecutor(1))
    gcs_service_pb2_grpc.add_InternalKVGcsServiceServicer_to_server(KV(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.mark.parametrize("case, message", [
    ("wrong token", "rejected the authentication token from RAY_AUTH_TOKEN: copy the head node's "
                    "`ray get-auth-token` output into RAY_AUTH_TOKEN"),
    ("no token", "requires token authentication and this machine has no token: copy the head node's"),
    ("nothing listens", "cannot reach the Ray cluster at 127.0.0.1:"),
    ("not Ray", "no Ray cluster answers at 127.0.0.1:"),
    ("other version", "runs Ray 2.51.0 on Python 3.11.7 but this driver has Ray " + ray.__version__),
])
def test_bad_address_or_token_is_one_sentence_and_exit_2(cluster, tmp_path, clip, config, monkeypatch, capsys,
                                                          case, message):
    shutil.copy(clip, tmp_path / "a.mp4")
    for name in ENV_DROPPED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", cluster.home)
    address, server, listener = f"127.0.0.1:{cluster.port}", None, None
    if case == "wrong token":
        monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 32)
    elif case == "no token":
        monkeypatch.setenv("HOME", str(tmp_path))
    elif case == "nothing listens":
        address = f"127.0.0.1:{free_ports(1)[0]}"
    elif case == "not Ray":
        listener = socket.create_server(("127.0.0.1", 0))  # accepts, then says nothing Ray would
        address = f"127.0.0.1:{listener.getsockname()[1]}"
    else:
        server, port = fake_gcs("2.51.0")
        address = f"127.0.0.1:{port}"
    started = time.perf_counter()
    try:
        code = run_batch(tmp_path, tmp_path / "out", ray_address=address, config=config, progress=False)
    finally:
        if server:
            server.stop(0)
        if listener:
            listener.close()
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert time.perf_counter() - started < 12  # not Ray's 20 s of retries
    assert not ray.is_initialized() and not (tmp_path / "out" / "summary.csv").exists()


def long_clip(clip, path, repeats=4):
    """The face clip ``repeats`` times over: 140 frames, long enough to lose a node in the middle."""
    cap = cv2.VideoCapture(str(clip))
    frames = []
    while (frame := cap.read()[1]) is not None:
        frames.append(frame)
    cap.release()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, frames[0].shape[1::-1])
    for _ in range(repeats):
        for frame in frames:
            writer.write(frame)
    writer.release()
    return len(frames) * repeats


def test_a_node_lost_mid_batch(cluster, tmp_path, clip, model_args):
    """SIGKILL to the second node's process group while one of its actors writes a video: the batch
    finishes on the head, every video ok with the same rows, no temporary left."""
    videos = tmp_path / "videos"
    videos.mkdir()
    frames = long_clip(clip, videos / "v0.mp4")
    for i in range(1, 6):
        shutil.copy(videos / "v0.mp4", videos / f"v{i}.mp4")
    out = tmp_path / "out"
    started = time.perf_counter()
    driver = cluster.driver("--source", str(videos), "--csv-dir", str(out), "--ray", f"127.0.0.1:{cluster.port}",
                            *model_args)
    node2, lost, lost_at, seen = cluster.processes["node2"], None, None, {}
    try:
        deadline = time.monotonic() + 150
        while lost is None and driver.poll() is None and time.monotonic() < deadline:
            for partial in out.glob(".*.partial*.csv"):
                pid = int(partial.name.split(".partial")[1].split(".")[0])
                try:
                    environ = Path(f"/proc/{pid}/environ").read_bytes()
                except OSError:
                    environ = b""
                seen[partial.name] = f"{NODE2}=1\0".encode() in environ
                if seen[partial.name]:
                    lost = partial.name
            time.sleep(0.05)
        assert lost, f"no actor of the second node was seen writing a video (partial files: {seen})"
        os.killpg(node2.pid, signal.SIGKILL)  # the node is lost, not stopped: no SIGTERM first
        for pid in ours(f"{NODE2}=1\0"):  # its workers, if they are not in its process group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node2.wait()
        lost_at = time.perf_counter() - started
        stdout, stderr = driver.communicate(timeout=240)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    print(f"lost-node batch: node killed at {lost_at:.1f} s while writing {lost}; {stdout}")
    assert driver.returncode == 0, stderr[-3000:]
    assert "6 videos ok, 0 errors, 0 skipped" in stdout and f"{6 * frames} frames analysed in 6 videos" in stdout
    rows = summary(out)
    assert sorted(rows) == [f"v{i}.mp4" for i in range(6)]
    assert all(row["status"] == "ok" and int(row["frames"]) == frames for row in rows.values())
    tables = [read_csv(out / f"v{i}.csv") for i in range(6)]  # six copies of one video: six equal tables
    assert all(table == tables[0] for table in tables) and len(tables[0]) >= 4 * 30
    assert not [p.name for p in out.rglob(".*partial*")]


def test_stopping_the_cluster_leaves_nothing_running(cluster):
    assert cluster.stop() == []
    assert all(process.poll() is not None for process in cluster.processes.values())
