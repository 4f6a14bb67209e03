"""Move GPT-Neo weights between our Mesh-TF checkpoints and HuggingFace's format, without torch.

    gpt-neo-hf export --model_path CKPT_OR_DIR --output_dir DIR [--model CONFIG] [--vocab_size N]
    gpt-neo-hf import --hf_dir DIR_OR_HUB_ID --output_dir DIR [--dtype bfloat16]

export: a checkpoint of ours (float32 or bfloat16 masters; optimizer slots are skipped) becomes
DIR/config.json (a complete GPTNeoConfig) and DIR/model.safetensors (float32, HF names, kernels
transposed to torch's [out, in], no lm_head: it is tied to wte), which
`transformers.GPTNeoForCausalLM.from_pretrained(DIR)` loads, plus DIR/generation_config.json (the
config's sampling keys) and the config's tokenizer as transformers' AutoTokenizer loads it
(tokenizer.json, tokenizer_config.json, special_tokens_map.json; GPT-2's also vocab.json +
merges.txt), so `pipeline("text-generation", model=DIR)` and lm-evaluation-harness run on DIR
offline. --vocab_size keeps the first N rows of wte (50257 for a vocab padded to 50304).

import: a HuggingFace GPT-Neo directory (config.json plus model.safetensors or pytorch_model.bin,
or their sharded `*.index.json` forms), or a hub id such as EleutherAI/gpt-neo-125M where no
such directory exists (downloaded when the hub is reachable), becomes DIR/model.ckpt-0 (exactly
the model variables and an int64 global_step 0, with float32 or bfloat16 masters) and
DIR/config_from_hf.json: a model config of ours whose training keys (datasets, batch size, steps,
mesh, layout) are placeholders to complete before fine-tuning with `main.py --model
DIR/config_from_hf.json`. The tokenizer files our data tools read (tokenizer.json, or vocab.json
+ merges.txt) are copied, so a dataset config's `tokenizer_path` can be DIR.
"""
import sys

from . import HelpFormatter, parser


def parse_args(argv=None):
    p = parser(__doc__)
    commands = p.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", formatter_class=HelpFormatter,
                                 help="our checkpoint -> HuggingFace directory (model, generation config, tokenizer)")
    export.add_argument("--model", default=None,
                        help="the checkpoint's model config: a path ending in .json or the name of one in configs/ "
                             "(its mesh_shape and layout are not used: any machine converts a pod's checkpoint); "
                             "default: the config.json a training run recorded in the --model_path directory")
    export.add_argument("--model_path", "--checkpoint", dest="checkpoint", default=None,
                        help="checkpoint prefix (DIR/model.ckpt-N) or directory (its newest checkpoint); "
                             "default: the newest in the config's model_path")
    export.add_argument("--output_dir", required=True, help="HuggingFace directory to write (local or gs://)")
    export.add_argument("--vocab_size", type=int, default=None,
                        help="keep the first N rows of wte (default n_vocab), e.g. 50257 for a vocab padded to 50304")
    export.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config keys replaced as in main.py (the checkpoint's model keys, e.g. n_layer=2)")
    imp = commands.add_parser("import", formatter_class=HelpFormatter,
                              help="HuggingFace GPT-Neo directory or hub id -> our checkpoint + config_from_hf.json")
    imp.add_argument("--hf_dir", required=True,
                     help="directory with config.json and model.safetensors or pytorch_model.bin (local or gs://), "
                          "or a HuggingFace hub id (e.g. EleutherAI/gpt-neo-125M) where no such directory exists, "
                          "downloaded when the hub is reachable")
    imp.add_argument("--output_dir", required=True, help="new directory for model.ckpt-0 and config_from_hf.json")
    imp.add_argument("--dtype", choices=("bfloat16", "float32"), default="float32",
                     help="master dtype of the checkpoint (the config's `precision`)")
    args, extra = p.parse_known_args(argv)
    # KEY=VALUE after other flags (argparse takes the positionals only where they first appear).
    late = [item for item in extra if args.command == "export" and not item.startswith("-")]
    if len(late) < len(extra):
        p.error("unrecognized arguments: %s" % " ".join(item for item in extra if item not in late))
    from ..trainer.config import ConfigError, parse_overrides  # TensorFlow loads from here on
    try:
        args.overrides = parse_overrides(getattr(args, "overrides", []) + late)
    except ConfigError as e:
        p.error(str(e))
    return args



def main(argv=None):
    args = parse_args(argv)
    from ..convert import huggingface  # the work, with TensorFlow
    return huggingface.main(args)


if __name__ == "__main__":
    sys.exit(main())
