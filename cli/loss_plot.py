"""A picture of a run: training and validation loss against the step, from the TensorBoard events in
`model_path`, as a PNG (matplotlib; `make demo` draws its run with it).

    gpt-neo-loss-plot --model_path build/demo_model --output build/demo_model/loss.png

Training loss is drawn per step and as a running mean over `--window` steps; validation loss (the
events under `<model_path>/eval`) as points at the steps it was measured.
"""
import sys

from . import parser


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--model_path", required=True, help="the run's model_path (local or gs://)")
    p.add_argument("--output", required=True, help="the PNG to write (local or gs://)")
    p.add_argument("--window", type=int, default=25, help="steps of the running mean of the training loss")
    args = p.parse_args(argv)
    if args.window < 1:
        p.error("--window must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    from ..trainer import loss_plot  # the work, with TensorFlow and matplotlib
    return loss_plot.main(args)


if __name__ == "__main__":
    sys.exit(main())
