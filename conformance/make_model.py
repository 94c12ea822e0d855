#!/usr/bin/env python3
"""make_model.py -- build a tiny "scripted" GGUF model for llama.cpp.

    conformance/make_model.py --reply-file R.txt --out M.gguf
    conformance/make_model.py --reply "Hello!" --out M.gguf [--context-length 4096]

Used by the conformance tests (tests/integration/conformance.rs): each test
makes a model that gives the reply it needs and serves it with
llama-cpp-python (installed by conformance/install.sh).

The output is a real, loadable GGUF file of the ``llama`` architecture.  Run
it under any llama.cpp-based server (here: llama-cpp-python's OpenAI-compatible
server).  For ANY chat conversation, greedy decoding produces exactly the
reply text, byte for byte, and then the end-of-turn token.  It is a
test fixture: it exercises a real tokenizer, chat template, sampler, KV cache,
context limit, streaming and HTTP layer, but its answer is fixed by the caller.

How it works
============

1. Vocabulary (``tokenizer.ggml.model = "gpt2"``, byte-level BPE)
   * ids 0..255: the 256 byte tokens, spelled in GPT-2's ``bytes_to_unicode``
     form (e.g. space -> "Ġ", newline -> "Ċ"), type NORMAL.  Any prompt text
     can therefore be tokenized.
   * one merge, "Ġ Ġ" -> "ĠĠ" (llama.cpp refuses a BPE vocab without
     ``tokenizer.ggml.merges``), and the merged token itself.
   * CONTROL tokens ``<|bos|> <|system|> <|user|> <|assistant|> <|end|>``.
     ``<|end|>`` is EOS and EOT (end of generation); ``<|bos|>`` is declared as
     BOS only so llama.cpp does not fall back to its GPT-2 default (id 11), and
     ``add_bos_token`` is false.
   * the reply, cut into pieces of at most 24 UTF-8 bytes (cut only at
     character boundaries), each one a USER_DEFINED token whose text is the raw
     piece.  llama.cpp copies USER_DEFINED token text verbatim when
     detokenizing (no byte-level decoding), and llama-cpp-python detokenizes
     token by token into a 32-byte buffer, so pieces must stay short.
   * pre-tokenizer ``qwen2``: any known name works for prompt tokenization;
     qwen2 is chosen because it sets ``clean_spaces = false``, so
     ``llama_detokenize`` never rewrites " ," / " ." / " 's" in the reply.

   Every token text in a GGUF vocab must be unique (llama.cpp asserts
   ``id_to_token.size() == token_to_id.size()`` and aborts otherwise).  And
   because this model's next token depends only on the current token, each
   reply piece must be a *different* token even when the reply repeats
   itself (e.g. two identical lines).  So the cut points are chosen to make
   every piece unique: greedy, longest piece first (<= 24 bytes), skipping
   any candidate already used or whose text collides with a byte, merge or
   control token, with backtracking when greedy gets stuck.  A piece may
   also be one byte that reuses the existing byte-level token for that byte
   (once per reply); llama.cpp decodes it back to that raw byte.  That
   covers replies like "x" or "é", whose text equals a byte token's text
   (GPT-2 spells byte 0x78 "x" and byte 0xE9 "é").  Candidates that look
   like special tokens (``<...>``, e.g. "<|im_end|>") are skipped too,
   because llama.cpp recognises some of those by their text and would make
   them end-of-generation tokens.  Very repetitive text has no such cut
   (301+ identical characters, ~600+ bytes of "abab..."); the script then
   exits with an error.  Ordinary prose and code are fine (tested with a
   19.7 KB Python source file: 822 tokens).

2. Chat template (``tokenizer.chat_template``)::

       {% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}<|assistant|>

   (simplified: list-of-parts content is rendered as its text parts), so the
   prompt ALWAYS ends with the control token ``<|assistant|>``.  Roles other
   than system/user/assistant just become plain text.

3. Network: one transformer block, every attention and feed-forward weight
   zero.  Attention output = W_o * (...) = 0 and FFN output = W_down * (...) =
   0, so the residual stream at the last position is just the embedding of
   the last token: the next token depends only on the current one.
   * embeddings are one-hot: dim 1 = ``<|assistant|>``, dim 2+k = reply piece
     k, dim 0 = "every other token" (shared);
   * RMS norm (weights = 1) divides a one-hot vector by its RMS, i.e. it
     becomes sqrt(n_embd) in the same single dimension -- a uniform scale
     that keeps the one-hot signal;
   * the output head (``output.weight``) maps dim 1 -> piece 0, dim 2+k ->
     piece k+1, the last piece's dim -> ``<|end|>`` and dim 0 -> ``<|end|>``.
     The weight is 100/sqrt(n_embd), so the chosen next token has logit ~100
     and every other token has logit 0: greedy picks it, and so does
     sampling at any ordinary temperature/top-k/top-p, even after a
     repetition penalty.
   So after ``<|assistant|>`` the model emits piece 0, 1, ..., n-1, then
   ``<|end|>``; the server stops on the EOS token and does not print it.

   Limitation: llama-cpp-python's Jinja2 chat formatter ALSO uses the EOS
   text "<|end|>" as a text stop sequence, so a reply containing the literal
   string "<|end|>" would be cut there; the script refuses such replies.

   n_embd = (number of pieces + 2) rounded up to a multiple of 64, head size
   64, one KV head, n_ff = 64, all tensors F32.  ``llama.context_length`` is
   4096 by default (the server's ``--n_ctx`` picks the real window).

4. Context window: with the byte-level vocabulary every prompt byte is at
   most one token (the only merge joins two spaces), and the chat template
   adds one control token per role marker, so a prompt's token count is
   about its byte count plus 2 per message plus 1.  Give llama-cpp-python an
   ``--n_ctx`` that is a multiple of 256: llama.cpp rounds the window up to
   one, but llama-cpp-python sizes its score buffer by the number given and
   answers HTTP 500 once generation passes it.

Requires the ``gguf`` (gguf-py) and ``numpy`` packages.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

try:
    import gguf
except ImportError:  # pragma: no cover
    sys.exit("make_model.py: the 'gguf' package is required (pip install gguf)")

MAX_PIECE_BYTES = 24
HEAD_DIM = 64
N_FF = 64
LOGIT = 100.0

CONTROL_TOKENS = ["<|bos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "<|{{ m.role }}|>"
    "{% if m.content is string %}{{ m.content }}"
    "{% elif m.content is iterable %}"
    "{% for part in m.content %}{% if part.text is defined %}{{ part.text }}{% endif %}{% endfor %}"
    "{% endif %}"
    "<|end|>"
    "{% endfor %}"
    "<|assistant|>"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def looks_special(s: str) -> bool:
    return len(s) >= 2 and s.startswith("<") and s.endswith(">")


def split_reply(text: str, reserved: set[str], max_bytes: int = MAX_PIECE_BYTES) -> list[tuple[str, int | None]]:
    """Cut `text` into pieces of <= max_bytes UTF-8 bytes that are all distinct tokens.

    Returns a list of (piece_text, byte_value_or_None).  A piece normally becomes
    a new USER_DEFINED token whose text (valid UTF-8, cut at character
    boundaries) must be unique in the vocab: not used by another piece, not in
    `reserved`, not special-looking.  A piece may instead be one byte that
    reuses the byte-level token for that byte (returned as its byte value; the
    text is then just a placeholder), which is how replies like "x" or "é" work.
    Every token may occur only once in the reply.

    Greedy longest-first with backtracking (iterative, so long replies don't hit
    Python's recursion limit)."""
    if not text:
        return []

    data = text.encode("utf-8")
    # byte offsets where a character starts (plus the end): user-defined pieces
    # must be valid UTF-8, so they start and end on these
    boundaries = set()
    off = 0
    for ch in text:
        boundaries.add(off)
        off += len(ch.encode("utf-8"))
    boundaries.add(off)

    def options(pos: int) -> list[tuple[int, str, int | None]]:
        # (end, text, byte) choices at byte offset `pos`: user-defined pieces,
        # longest first, then the single byte token for data[pos]
        opts = []
        if pos in boundaries:
            for end in range(min(len(data), pos + max_bytes), pos, -1):
                if end in boundaries:
                    opts.append((end, data[pos:end].decode("utf-8"), None))
        opts.append((pos + 1, data[pos:pos + 1].decode("latin-1"), data[pos]))
        return opts

    def key(cand: str, byte: int | None):
        return ("byte", byte) if byte is not None else ("user", cand)

    used: set = set()
    pieces: list[tuple[str, int | None]] = []
    # stack of (pos, remaining options); pieces[i] was taken from stack[i]
    stack: list[tuple[int, list]] = [(0, options(0))]
    budget = 200_000
    while stack:
        budget -= 1
        if budget < 0:
            break
        pos, opts = stack[-1]
        took = False
        while opts:
            end, cand, byte = opts.pop(0)
            k = key(cand, byte)
            if k in used:
                continue
            if byte is None and (cand in reserved or looks_special(cand)):
                continue
            used.add(k)
            pieces.append((cand, byte))
            if end == len(data):
                return pieces
            stack.append((end, options(end)))
            took = True
            break
        if not took:
            # dead end: undo the piece that led here and try the next option
            stack.pop()
            if pieces:
                used.discard(key(*pieces.pop()))
    raise SystemExit(
        "make_model.py: cannot cut the reply into distinct tokens of <= "
        f"{max_bytes} bytes (reply too repetitive)"
    )


def build(reply: str, out: str, context_length: int = 4096, name: str = "scripted-reply") -> dict:
    b2u = bytes_to_unicode()
    tokens: list[str] = [b2u[b] for b in range(256)]
    types: list[int] = [gguf.TokenType.NORMAL] * 256
    merges = ["Ġ Ġ"]
    tokens.append("ĠĠ")
    types.append(gguf.TokenType.NORMAL)
    control_id: dict[str, int] = {}
    for t in CONTROL_TOKENS:
        control_id[t] = len(tokens)
        tokens.append(t)
        types.append(gguf.TokenType.CONTROL)

    if "<|end|>" in reply:
        # llama-cpp-python's chat formatter also passes the EOS text as a *text*
        # stop sequence, so the server would cut the reply at this string.
        raise SystemExit("make_model.py: the reply must not contain the literal text '<|end|>' "
                         "(the server uses it as a stop string)")
    pieces = split_reply(reply, reserved=set(tokens))
    assert b"".join(p.encode("utf-8") if byte is None else bytes([byte])
                    for p, byte in pieces) == reply.encode("utf-8")
    piece_ids: list[int] = []  # token id of each reply piece, in order
    for p, byte in pieces:
        if byte is not None:
            piece_ids.append(byte)  # byte-level token for this single byte (id == byte value)
        else:
            piece_ids.append(len(tokens))
            tokens.append(p)
            types.append(gguf.TokenType.USER_DEFINED)
    assert len(set(tokens)) == len(tokens), "duplicate token text"
    assert len(set(piece_ids)) == len(piece_ids), "a token occurs twice in the reply"

    n_vocab = len(tokens)
    n_pieces = len(pieces)
    n_embd = max(HEAD_DIM, -(-(n_pieces + 2) // HEAD_DIM) * HEAD_DIM)
    n_head = n_embd // HEAD_DIM
    n_head_kv = 1
    n_embd_kv = HEAD_DIM * n_head_kv

    assistant = control_id["<|assistant|>"]
    end = control_id["<|end|>"]

    # one-hot embeddings: numpy shape (n_vocab, n_embd) == ggml ne {n_embd, n_vocab}
    embd = np.zeros((n_vocab, n_embd), dtype=np.float32)
    embd[:, 0] = 1.0  # "other"
    embd[assistant, 0] = 0.0
    embd[assistant, 1] = 1.0
    for k in range(n_pieces):
        tid = piece_ids[k]
        embd[tid, 0] = 0.0
        embd[tid, 2 + k] = 1.0

    # output head: logits[j] = sum_i W[j, i] * x_i, x = rmsnorm(embedding) = sqrt(n_embd) * one-hot
    w = LOGIT / np.sqrt(n_embd)
    out_w = np.zeros((n_vocab, n_embd), dtype=np.float32)
    out_w[end, 0] = w
    if n_pieces:
        out_w[piece_ids[0], 1] = w
        for k in range(n_pieces - 1):
            out_w[piece_ids[k + 1], 2 + k] = w
        out_w[end, 2 + n_pieces - 1] = w
    else:
        out_w[end, 1] = w

    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name(name)
    writer.add_description("scripted test model generated by make_model.py; greedy chat reply is fixed")
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(1)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(control_id["<|bos|>"])
    writer.add_eos_token_id(end)
    writer.add_eot_token_id(end)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    ones = np.ones(n_embd, dtype=np.float32)
    writer.add_tensor("token_embd.weight", embd)
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", out_w)
    writer.add_tensor("blk.0.attn_norm.weight", ones)
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((n_embd, n_embd), dtype=np.float32))
    writer.add_tensor("blk.0.attn_k.weight", np.zeros((n_embd_kv, n_embd), dtype=np.float32))
    writer.add_tensor("blk.0.attn_v.weight", np.zeros((n_embd_kv, n_embd), dtype=np.float32))
    writer.add_tensor("blk.0.attn_output.weight", np.zeros((n_embd, n_embd), dtype=np.float32))
    writer.add_tensor("blk.0.ffn_norm.weight", ones)
    writer.add_tensor("blk.0.ffn_gate.weight", np.zeros((N_FF, n_embd), dtype=np.float32))
    writer.add_tensor("blk.0.ffn_up.weight", np.zeros((N_FF, n_embd), dtype=np.float32))
    writer.add_tensor("blk.0.ffn_down.weight", np.zeros((n_embd, N_FF), dtype=np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"pieces": pieces, "n_vocab": n_vocab, "n_embd": n_embd}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--reply-file", help="file whose exact contents (UTF-8) are the reply")
    src.add_argument("--reply", help="the reply text itself")
    ap.add_argument("--out", required=True, help="output .gguf path")
    ap.add_argument("--context-length", type=int, default=4096,
                    help="llama.context_length metadata (default 4096)")
    ap.add_argument("--name", default="scripted-reply", help="general.name metadata")
    ap.add_argument("--verbose", "-v", action="store_true", help="print the reply pieces")
    args = ap.parse_args(argv)

    if args.reply_file is not None:
        with open(args.reply_file, "rb") as f:
            reply = f.read().decode("utf-8")
    else:
        reply = args.reply
    info = build(reply, args.out, args.context_length, args.name)
    print(f"make_model.py: wrote {args.out}: {len(reply.encode('utf-8'))} reply bytes in "
          f"{len(info['pieces'])} tokens, n_vocab={info['n_vocab']}, n_embd={info['n_embd']}",
          file=sys.stderr)
    if args.verbose:
        for i, (p, byte) in enumerate(info["pieces"]):
            kind = "user-defined" if byte is None else f"byte token {byte}"
            print(f"  piece {i}: {p!r} ({kind})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
