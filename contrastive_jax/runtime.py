"""What a command that runs the model does before its work: the run's flags, the libraries'
console noise kept out, and jax.distributed for runs of several processes.

`python -m contrastive_jax.main` and `python -m contrastive_jax.linear_eval` share these flags:
--config, --workdir, the multi-process ones and --library_logs. TPU pods and SLURM find their
peers by themselves; elsewhere pass --coordinator_address, --num_processes and --process_id, or
the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables.
"""

from __future__ import annotations

import logging as python_logging
import os
import sys

from absl import flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:ARG]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard events.")
flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                    "HOST:PORT of process 0, for multi-process runs outside TPU pods / SLURM.")
flags.DEFINE_integer("num_processes", int(os.environ.get("JAX_NUM_PROCESSES", "0")) or None,
                     "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", int(os.environ.get("JAX_PROCESS_ID", "-1")),
                     "This process's index (with --coordinator_address).")
flags.DEFINE_bool("library_logs", False, "Show Orbax's and TensorStore's INFO lines (about 40 "
                  "per checkpoint).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def quiet_library_logs() -> None:
    """Orbax reports every save and restore step by step at INFO (some 40 lines a checkpoint):
    keep them, and TensorStore's, out of the console unless --library_logs asks for them."""
    if FLAGS.library_logs:
        return
    # ABSLHandler passes records on to its Python handler, which applies the filters.
    # absl's logging.WARNING is its verbosity (-1); records carry Python's levels.
    logging.get_absl_handler().python_handler.addFilter(_project_lines)


def _project_lines(record: python_logging.LogRecord) -> bool:
    """Whether a log record reaches the console without --library_logs: not Orbax's or
    TensorStore's INFO lines, and not the tracebacks that a failed save's threads log (the
    failure reaches the loop, which ends the run with one error line saying it)."""
    if not any(name in record.pathname for name in ("orbax", "tensorstore")):
        return True
    return record.levelno >= python_logging.WARNING and not record.exc_info


def drop_closed_event_loop_reports() -> None:
    """After a failed Orbax save, TensorStore's callbacks for the writes still in flight call
    into the save's event loop, which has closed; Python reports each as an unraisable
    RuntimeError with a traceback (dozens of them, before and around the one error line). They
    say nothing the error line does not, so they are dropped; any other report is kept."""
    previous = sys.unraisablehook

    def hook(report) -> None:
        if not (report.exc_type is RuntimeError and str(report.exc_value) ==
                "Event loop is closed"):
            previous(report)

    sys.unraisablehook = hook


def _on_pod_or_cluster() -> bool:
    """A TPU pod slice or a SLURM job of several tasks: jax.distributed finds its peers."""
    tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in tpu_hosts or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize_distributed() -> None:
    """jax.distributed.initialize for multi-process runs; nothing for a single process."""
    import jax
    if FLAGS.coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only runs
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes,
                                   process_id=FLAGS.process_id if FLAGS.process_id >= 0 else None)
    elif _on_pod_or_cluster():
        jax.distributed.initialize()


def start() -> None:
    """Before a command's work: tf.data kept off the accelerators (they are JAX's), the
    libraries' logs quiet, jax.distributed started where the run spans several processes."""
    from contrastive_jax.data import availability
    availability.keep_tensorflow_off_accelerators()
    quiet_library_logs()
    drop_closed_event_loop_reports()
    initialize_distributed()
