"""A picture of a run: training and validation loss against the step, from the TensorBoard events in
`model_path`, as a PNG: the work of `gpt-neo-loss-plot` (usage: cli/loss_plot.py).
"""
import os
import sys

import numpy as np

from ..errors import UserError
from ..meshtf import tf


def loss_events(directory):
    """{step: loss} of the `loss` scalars of the event files directly in `directory` (the last value of a
    step wins: a resumed run writes the steps after its checkpoint again)."""
    losses = {}
    for path in sorted(tf.io.gfile.glob(directory.rstrip("/") + "/events.out.tfevents.*")):
        try:
            for event in tf.train.summary_iterator(path):
                for value in event.summary.value:
                    if value.tag == "loss":
                        number = value.simple_value if value.HasField("simple_value") else \
                            float(tf.make_ndarray(value.tensor))
                        losses[event.step] = number
        except tf.errors.DataLossError:  # a file whose writer was killed ends in a cut-off record
            continue
    return losses


def running_mean(values, window):
    """The mean of the last `window` values (fewer at the start), for each value."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def plot(model_path, output, window=25):
    """Draw `model_path`'s losses into the PNG `output`; return (training steps, validation points)."""
    train = loss_events(model_path)
    if not train:
        raise UserError("no training loss in %s: train first (its TensorBoard events hold the loss)" % model_path)
    validation = loss_events(model_path.rstrip("/") + "/eval")
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    from matplotlib import pyplot

    steps = np.array(sorted(train))
    values = np.array([train[s] for s in steps])
    figure, axes = pyplot.subplots(figsize=(7, 4), dpi=100)
    axes.plot(steps, values, color="#9ecae1", linewidth=0.8, label="training loss (per step)")
    axes.plot(steps, running_mean(values, window), color="#08519c", linewidth=1.8,
              label="training loss (mean of %d steps)" % window)
    if validation:
        eval_steps = sorted(validation)
        axes.plot(eval_steps, [validation[s] for s in eval_steps], "o-", color="#d94801", label="validation loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (cross-entropy + z-loss, nats)")
    axes.set_title(os.path.basename(model_path.rstrip("/")))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with tf.io.gfile.GFile(output, "wb") as f:
        figure.savefig(f, format="png")
    pyplot.close(figure)
    return len(steps), len(validation)


def main(args):
    """Run the parsed command line (cli/loss_plot.py); the exit status."""
    try:
        steps, points = plot(args.model_path, args.output, args.window)
    except UserError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    print("wrote %s: %d training steps, %d validation points" % (args.output, steps, points))
    return 0
