"""--predict: sample continuations of prompts from the latest checkpoint, print and save them."""
import json

from inputs.prompts import input_fn_for
from models.sampling import decode_length
from tfrecords_tools.records import write_atomically

SAMPLE_RULE = "=" * 40


def continuation(ids, length, n_ctx, max_new_tokens, eos_id):
    """The generated tokens of one row and why they ended ("eos" or "length")."""
    limit = n_ctx if max_new_tokens is None else min(n_ctx, length + max_new_tokens)
    tokens = [int(t) for t in ids[length:limit]]
    if eos_id in tokens:
        return tokens[:tokens.index(eos_id)], "eos"
    return tokens, "length"


def predict(estimator, config, tokenizer, rows, output_path, log=print):
    """Sample each row (inputs.prompts.encode_prompts); write `<output>.txt` and `<output>.jsonl`;
    return the samples."""
    m, p = config.model, config.predict
    length = decode_length(max(len(row.tokens) for row in rows), p.predict_max_steps, m.n_ctx)
    input_fn = input_fn_for(rows, length, config.train.predict_batch_size, config.data.padding_id)
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
        log(blocks[-1])
    write_atomically(output_path + ".txt", "".join(blocks).encode("utf-8"))
    write_atomically(output_path + ".jsonl",
                     "".join(json.dumps(sample, ensure_ascii=False) + "\n" for sample in results).encode("utf-8"))
    log("wrote %d samples to %s.txt and %s.jsonl" % (len(results), output_path, output_path))
    return results
