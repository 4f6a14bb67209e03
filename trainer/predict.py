"""--predict: sample continuations of prompts from the latest checkpoint, print and save them."""
import json
import logging
import os
import tempfile

from .. import storage
from ..errors import ConfigError, first_line
from ..inputs.prompts import prompts_input_fn
from ..meshtf import tf
from ..models.sampling import decode_length

log = logging.getLogger("gptneo")
SAMPLE_RULE = "=" * 40
OUTPUT_FIX = "give --output a path in a writable directory"


def continuation(ids, length, n_ctx, max_new_tokens, eos_id):
    """The generated tokens of one row and why they ended ("eos" or "length")."""
    limit = n_ctx if max_new_tokens is None else min(n_ctx, length + max_new_tokens)
    tokens = [int(t) for t in ids[length:limit]]
    if eos_id in tokens:
        return tokens[:tokens.index(eos_id)], "eos"
    return tokens, "length"


def predict(estimator, config, tokenizer, rows, output_path):
    """Sample each row (inputs.prompts.encode_prompts); log and write them to `<output>.txt` and
    `<output>.jsonl`; return the samples. An output that cannot be written is a ConfigError before
    sampling, or after it (see `write_samples`)."""
    problem = storage.write_problem(os.path.dirname(output_path) or ".")
    if problem:
        raise ConfigError("cannot write the samples to %s.txt (%s); %s" % (output_path, problem, OUTPUT_FIX))
    m, p = config.model, config.predict
    length = decode_length(max(len(row.tokens) for row in rows), p.predict_max_steps, m.n_ctx)
    input_fn = prompts_input_fn(rows, config.train.predict_batch_size, length, config.data.padding_id)
    results = []
    for row, output in zip(rows, estimator.predict(input_fn, yield_single_examples=True)):
        tokens, finish = continuation(output["ids"], len(row.tokens), m.n_ctx, p.predict_max_steps,
                                      config.data.eos_id)
        text = tokenizer.decode(tokens)
        results.append({"prompt_index": row.prompt_index, "sample_index": row.sample_index,
                        "prompt": row.prompt, "prompt_tokens": row.tokens, "tokens": tokens, "text": text,
                        "finish": finish})
    blocks = []
    for i, sample in enumerate(results):
        shown = sample["text"] if p.remove_partial_sequences else sample["prompt"] + sample["text"]
        blocks.append("%s SAMPLE %d %s\n\n%s\n\n%s\n" % (SAMPLE_RULE, i, SAMPLE_RULE, shown, "=" * 80))
        log.info(blocks[-1])
    write_samples(output_path, {".txt": "".join(blocks),
                                ".jsonl": "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in results)})
    log.info("wrote %d samples to %s.txt and %s.jsonl", len(results), output_path, output_path)
    return results


def write_samples(output_path, texts):
    """Write each `{suffix: text}` to `output_path + suffix`. Should that fail after all (the
    directory went away or filled up during sampling), write them to a new directory in the system's
    temp directory and raise a ConfigError saying where; should that fail too, the error says they
    were printed (`predict` logs them first)."""
    try:
        _write(output_path, texts)
        return
    except tf.errors.OpError as e:
        reason = first_line(e)
    try:
        fallback = os.path.join(tempfile.mkdtemp(prefix="gptneo_samples_"), os.path.basename(output_path))
        _write(fallback, texts)
    except (OSError, tf.errors.OpError) as e:
        raise ConfigError("cannot write the samples to %s.txt (%s), nor to the system's temp directory (%s): "
                          "copy them from the output above; %s"
                          % (output_path, reason, first_line(e), OUTPUT_FIX)) from None
    raise ConfigError("cannot write the samples to %s.txt (%s), so they are in %s.txt and .jsonl instead; %s"
                      % (output_path, reason, fallback, OUTPUT_FIX))


def _write(output_path, texts):
    for suffix, text in texts.items():
        storage.write_atomically(output_path + suffix, text.encode("utf-8"))
