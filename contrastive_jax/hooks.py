"""clu periodic actions the training loop calls after every step: a progress report (steps/s,
ETA) and a `jax.profiler` trace of a few steps."""

from __future__ import annotations

from clu import metric_writers, periodic_actions, profiler


def report_progress(total_steps: int, writer: metric_writers.MetricWriter
                    ) -> periodic_actions.ReportProgress:
    """Logs steps/s, the share done and the ETA once a minute and at the last step (with the
    share of time spent in `timed` parts, such as evaluation), and writes `steps_per_sec` and
    `uptime` to `writer` (TensorBoard, not metrics.jsonl)."""
    return periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)


class Profile(periodic_actions.Profile):
    """clu's profiler action, tracing `num_steps` steps once, from `first_step` on, into
    `logdir`/plugins/profile (TensorBoard's profile tab and Perfetto read it). `close` ends a
    trace that the run stopped inside of, so that the trace is written and a later one can
    start."""

    def __init__(self, logdir: str, num_steps: int, first_step: int):
        super().__init__(logdir=logdir, num_profile_steps=num_steps, profile_duration_ms=None,
                         first_profile=first_step, every_secs=None)

    def close(self) -> None:
        if self._session_running:
            self._end_session(profiler.stop())
