"""Batch engines: the same ``jobs.process_video`` in this process, in a crash-retrying pool
of spawned worker processes, or in Ray Data actors on a cluster.  Nothing here imports Ray
unless asked.
"""
import json
import os
import re
import socket
from dataclasses import asdict

from fer_server.config import PACKAGE
from fer_server.offline.jobs import (BatchInputError, Job, empty_row, process_video, remove_job_partials,
                                    write_record)

def build_worker_pipeline(config, threads=1):
    """The configured pipeline with ``threads`` TFLite threads and as many OpenCV threads.

    Sets ``OMP_NUM_THREADS`` and, where TensorFlow is installed, its
    intra-/inter-op thread counts too, so call it before anything else in
    the process uses TensorFlow.

    Raises:
        model_files.ModelLoadError: the model files cannot be loaded.
    """
    import cv2

    for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ[name] = str(threads)
    cv2.setNumThreads(threads)
    from fer_server.model.classifier import quiet_tensorflow
    from fer_server.model.litert import tensorflow_installed

    if tensorflow_installed():  # the serve-only install runs model.tflite on LiteRT: no TensorFlow to set up
        with quiet_tensorflow():
            import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already initialised in this process
            pass
    from fer_server.builders import build_classifier, build_pipeline

    with quiet_tensorflow():
        classifier = build_classifier(config, threads)
    return build_pipeline(config, classifier=classifier)


_worker = {}


def _init_pool_worker(config, labels, started, run):
    _worker.update(pipeline=build_worker_pipeline(config), labels=labels, started=started, run=run)


def _pool_task(job):
    _worker["started"].put(job.video)  # SimpleQueue: written before the video starts, even if it then crashes
    try:
        return _worker["run"](job, _worker["pipeline"], _worker["labels"])
    except KeyboardInterrupt:  # its temporaries are removed; exit before the pool hands over the next video
        os._exit(130)


class RayVideoWorker:
    """A Ray Data actor (``map_batches`` callable class): loads the model once, then one video per call.

    Each batch is ``{"job": [JSON of a Job], ...}``; the result is
    ``{"row": [JSON of its summary row], ...}`` (strings keep Arrow's
    schema fixed whether a row is ok or an error).
    """

    def __init__(self, config, labels):
        self.pipeline = build_worker_pipeline(config)
        self.labels = labels

    def __call__(self, batch):
        rows = [process_video(Job(**json.loads(text)), self.pipeline, self.labels) for text in batch["job"]]
        return {"row": [json.dumps(row) for row in rows]}


_ADDRESS = re.compile(r"(?:([a-z]+)://)?\[?([^\]/]+?)\]?:(\d+)")
_TOKEN_HELP = ("copy the head node's `ray get-auth-token` output into RAY_AUTH_TOKEN, or into a file named by "
               "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, on this machine")


def ray_auth_token():
    """The Ray authentication token this machine has, found where Ray looks for it.

    In Ray's order: ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``
    names, ``~/.ray/auth_token``.

    Returns:
        ``(token, where)``: the token (None when there is none) and a few words
        naming where it came from (for messages).

    Raises:
        BatchInputError: ``RAY_AUTH_TOKEN_PATH`` names a file that cannot be read or is empty.
    """
    from ray._raylet import AuthenticationTokenLoader
    from ray.exceptions import AuthenticationError

    where = ("RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else
             os.environ["RAY_AUTH_TOKEN_PATH"] if os.environ.get("RAY_AUTH_TOKEN_PATH") else
             os.path.join("~", ".ray", "auth_token"))
    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # the variables may have changed since Ray last read them
    try:
        if not loader.has_token(ignore_auth_mode=True):
            return None, where
        return loader.get_raw_token(ignore_auth_mode=True).strip() or None, where
    except AuthenticationError:
        raise BatchInputError(f"RAY_AUTH_TOKEN_PATH names {where}, which cannot be read or is empty: "
                              f"{_TOKEN_HELP}") from None


def _versions_differ(cluster):
    """``cluster``: the GCS's cluster metadata; True when Ray would refuse this driver for its versions."""
    import platform

    import ray

    level = 2 if os.environ.get("RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL", "patch") == "minor" else 3
    python = platform.python_version()
    return (cluster.get("ray_version", ray.__version__) != ray.__version__ or
            cluster.get("python_version", python).split(".")[:level] != python.split(".")[:level])


def check_ray_address(address, timeout_s=5.0):
    """Check that a Ray cluster answers at ``host:port``, and find its authentication mode.

    One socket connection, then at most two gRPC calls of at most
    ``timeout_s`` seconds each to the cluster's GCS (without a token, then
    with this machine's token, see ``ray_auth_token``) reading the cluster's
    Ray and Python versions; ``ray.init`` would instead retry for 20 s and
    bury the reason in warnings.

    Returns:
        ``"token"`` or ``"disabled"``: the cluster's authentication mode (set
        ``RAY_AUTH_MODE`` to it before ``ray.init``); None for an address it
        does not check (``auto``, ``ray://`` Ray Client addresses, TLS).

    Raises:
        BatchInputError: nothing answers at that address, or not a Ray GCS;
            the cluster wants a token and this machine has none, or a wrong
            one; the cluster runs another Ray or Python version than this driver.
    """
    import json as json_module

    match = _ADDRESS.fullmatch(address.strip())
    if not match:
        return None  # "auto" and the like: ray.init decides
    scheme, host, port = match[1], match[2], int(match[3])
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise BatchInputError(f"cannot reach the Ray cluster at {address} ({e}): start it with `ray start --head "
                              f"--port={port}` or give the head node's address") from None
    if scheme not in (None, "gcs") or os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return None
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    request = gcs_service_pb2.InternalKVGetRequest(key=b"CLUSTER_METADATA", namespace=b"cluster")

    def get(metadata):
        with grpc.insecure_channel(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}") as channel:
            return gcs_service_pb2_grpc.InternalKVGcsServiceStub(channel).InternalKVGet(
                request, timeout=timeout_s, metadata=metadata)

    mode = "disabled"
    try:
        try:
            reply = get(None)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            token, where = ray_auth_token()
            if token is None:
                raise BatchInputError(f"the Ray cluster at {address} requires token authentication and this "
                                      f"machine has no token: {_TOKEN_HELP}") from None
            mode = "token"
            try:
                reply = get((("authorization", f"Bearer {token}"),))
            except grpc.RpcError as e2:
                if e2.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise
                raise BatchInputError(f"the Ray cluster at {address} rejected the authentication token from "
                                      f"{where}: {_TOKEN_HELP}") from None
    except grpc.RpcError as e:
        details = (e.details() or str(e.code())).splitlines()[0]
        raise BatchInputError(f"no Ray cluster answers at {address} ({details}): give the port of the head "
                              f"node's `ray start --head --port=PORT` (6379 by default)") from None
    try:
        cluster = json_module.loads(reply.value) if reply.value else {}
    except ValueError:
        cluster = {}
    if _versions_differ(cluster):
        import platform

        import ray

        raise BatchInputError(f"the Ray cluster at {address} runs Ray {cluster.get('ray_version')} on Python "
                              f"{cluster.get('python_version')} but this driver has Ray {ray.__version__} on "
                              f"Python {platform.python_version()}: install the same versions on both "
                              f"(requirements-ray.txt)")
    return mode


def start_ray(address, num_cpus=None):
    """Connect to the Ray cluster at ``address`` or, for ``""``/None, start a local instance.

    A Ray already initialised in this process (a test's ``ray.init(num_cpus=2)``)
    is used as it is.  For an address, ``check_ray_address`` finds the
    cluster's authentication mode first and this sets ``RAY_AUTH_MODE`` to
    it for this process (the token comes from where Ray looks for it).
    Workers get this project on ``PYTHONPATH`` (so it must be at the same
    path on every node) and one thread per library.

    Returns:
        True when this call started or connected Ray (the caller shuts it down).

    Raises:
        BatchInputError: Ray is not installed, or the cluster cannot be reached,
            authenticated or used (see ``check_ray_address``).
    """
    try:
        import ray
    except ImportError:
        raise BatchInputError("--ray needs Ray: pip install -r requirements-ray.txt") from None
    if ray.is_initialized():
        return False
    env = {"PYTHONPATH": str(PACKAGE.parent), "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
           "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if address:
        mode = check_ray_address(address)
        if mode and os.environ.get("RAY_AUTH_MODE", "disabled").lower() != mode:
            os.environ["RAY_AUTH_MODE"] = mode
            from ray._raylet import Config

            Config.initialize("")  # Ray read RAY_AUTH_MODE at import; as ray.init itself does
    auth_error = getattr(ray.exceptions, "AuthenticationError", ConnectionError)  # token auth: Ray 2.52 and later
    try:
        ray.init(address=address or None, num_cpus=None if address else num_cpus, include_dashboard=False,
                 runtime_env={"env_vars": env}, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError, auth_error) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BatchInputError(f"cannot connect to Ray at {address or 'a new local instance'} ({reason})") from None
    return True


def ray_rows(todo, config, labels, workers):
    """Rows from Ray Data actors (``RayVideoWorker``), one video per task, on the Ray this process uses.

    The pool starts ``workers`` actors (0/None: the cluster's CPUs; at most
    one per video), each given one video at a time.
    An actor lost with its node is restarted and its video retried by Ray
    Data (``max_restarts=-1``); the temporaries it left are removed at the end.

    Raises:
        ray.exceptions.RayError: Ray Data gave up on a video (its actor kept dying).
    """
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    if hasattr(context, "autoscaling_config"):  # one video per actor: an actor is busy at 100%, not 175%
        from dataclasses import replace

        context.autoscaling_config = replace(context.autoscaling_config, actor_pool_util_upscaling_threshold=1.0)
    size = min(workers or max(1, int(ray.cluster_resources().get("CPU", 1))), len(todo))
    dataset = ray.data.from_items([{"job": json.dumps(asdict(job))} for job in todo],
                                  override_num_blocks=len(todo))
    dataset = dataset.map_batches(RayVideoWorker, fn_constructor_kwargs={"config": config, "labels": labels},
                                  batch_size=1, num_cpus=1, zero_copy_batch=True,
                                  # every actor from the start, one video each at a time (videos are long
                                  # and uneven: no actor hoards a queue); down to 1 when nodes are lost
                                  compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size, initial_size=size,
                                                                     max_tasks_in_flight_per_actor=1))
    for item in dataset.iter_rows():
        yield json.loads(item["row"])
    for job in todo:  # an actor lost with its node (on a shared folder) leaves its temporaries behind
        remove_job_partials(job)


def pool_rows(todo, config, labels, workers, executors, run=process_video):
    """Rows from a spawned process pool; ``run(job, pipeline, labels)`` is the per-video work.

    A worker that dies (a crash in a decoder, the OOM killer) breaks the
    pool: each video that was being analysed then is run again alone in a
    fresh worker, and gets an error row if that one dies too; the videos not
    yet begun go to a new pool.

    Raises:
        RuntimeError: the workers died before starting any video (model loading).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")
    started = context.SimpleQueue()

    def pool_round(jobs, size):
        """Yield the rows of ``jobs``; return ``(lost jobs, videos begun)``."""
        executor = ProcessPoolExecutor(size, mp_context=context, initializer=_init_pool_worker,
                                       initargs=(config, labels, started, run))
        executors.append(executor)
        futures = {executor.submit(_pool_task, job): job for job in jobs}
        lost = []
        for future in as_completed(futures):
            try:
                yield future.result()
            except BrokenProcessPool:
                lost.append(futures[future])
        executor.shutdown()
        begun = set()
        while not started.empty():
            begun.add(started.get())
        for job in lost:
            remove_job_partials(job)
        if lost and not begun.intersection(job.video for job in lost):
            raise RuntimeError("the worker processes died before analysing any video")
        return lost, begun

    pending = list(todo)
    while pending:
        lost, begun = yield from pool_round(pending, min(workers, len(pending)))
        for job in (job for job in lost if job.video in begun):
            crashed, _ = yield from pool_round([job], 1)
            if crashed:
                row = empty_row(job, labels, "the worker process died while analysing it, twice")
                write_record(job, row)
                yield row
        pending = [job for job in lost if job.video not in begun]


def serial_rows(todo, config, labels):
    from fer_server.builders import build_pipeline

    pipeline = build_pipeline(config)
    for job in todo:
        yield process_video(job, pipeline, labels)


def stop_pool(executors):
    """Ctrl-C: pass SIGINT on to pool workers (their temporaries are removed as it unwinds), then wait."""
    import signal

    for executor in executors:
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            if process.is_alive():
                os.kill(process.pid, signal.SIGINT)
        executor.shutdown(wait=True, cancel_futures=True)
