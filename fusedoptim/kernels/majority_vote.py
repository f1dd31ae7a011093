"""signSGD with majority vote (Bernstein et al. 2018, 2019): 1 bit per gradient element on the wire.

Each worker sends sign(g) packed 32 to an int32 word; every worker gathers all the words and takes,
per element, the sign of the vote:

    vote_e = sign( Σ_r s_{r,e} ),   s_{r,e} = +1 if g_{r,e} ≥ 0 else −1

which is 0 on a tie (an even number of workers split evenly): no step for that element. A gradient
of exactly 0 votes +1 (one bit has no third value).

``pack_signs`` writes ⌈n/32⌉ words: 1/32 of the bytes of an fp32 gradient. ``majority_vote`` reads
the gathered words of every worker and writes the vote in the gradient's dtype.
"""
import torch
import triton
import triton.language as tl

BITS = 32
WORDS_PER_PROGRAM = 128


@triton.jit
def pack_signs_kernel(grad_ptr, words_ptr, numel, n_words, WORDS: tl.constexpr):
    word = tl.program_id(0).to(tl.int64) * WORDS + tl.arange(0, WORDS)
    bit = tl.arange(0, 32)
    offsets = word[:, None] * 32 + bit[None, :]
    g = tl.load(grad_ptr + offsets, mask=offsets < numel, other=-1.0).to(tl.float32)
    # Distinct powers of two: their sum is their OR; bit 31 wraps to the sign bit of the int32 word.
    bits = tl.where(g >= 0.0, (1 << bit)[None, :], 0)
    tl.store(words_ptr + word, tl.sum(bits, axis=1).to(tl.int32), mask=word < n_words)


@triton.jit
def majority_vote_kernel(gathered_ptr, vote_ptr, numel, n_words, WORLD_SIZE: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < numel
    word, bit = offsets // 32, (offsets % 32).to(tl.int32)
    positive = tl.zeros((BLOCK_SIZE,), dtype=tl.int32)
    for rank in range(WORLD_SIZE):  # a constant of the job: one compilation, and an unrolled loop
        words = tl.load(gathered_ptr + rank * n_words + word, mask=mask, other=0)
        positive += (words >> bit) & 1
    votes = 2 * positive - WORLD_SIZE  # Σ_r s_r: each worker's +1 or −1
    vote = tl.where(votes > 0, 1.0, tl.where(votes < 0, -1.0, 0.0))
    tl.store(vote_ptr + offsets, vote.to(vote_ptr.dtype.element_ty), mask=mask)


def packed_words(numel: int) -> int:
    return triton.cdiv(numel, BITS)


def pack_signs(grad: torch.Tensor) -> torch.Tensor:
    """sign(grad) ≥ 0 as bits, 32 per int32 word, element i at bit i % 32 of word i // 32."""
    if not grad.is_contiguous() or grad.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"pack_signs: grad must be a contiguous fp32, bf16 or fp16 tensor, got {grad.dtype}")
    n_words = packed_words(grad.numel())
    words = torch.empty(n_words, dtype=torch.int32, device=grad.device)
    if n_words:
        pack_signs_kernel[(triton.cdiv(n_words, WORDS_PER_PROGRAM),)](grad, words, grad.numel(), n_words,
                                                                     WORDS=WORDS_PER_PROGRAM)
    return words


def majority_vote(gathered: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write into ``out`` the sign of the vote of the ``gathered`` words (world_size × ⌈numel/32⌉)."""
    world_size, n_words = gathered.shape
    if n_words != packed_words(out.numel()) or gathered.dtype != torch.int32 or not out.is_contiguous():
        raise ValueError(f"majority_vote: gathered must be int32 of shape (world_size, {packed_words(out.numel())}) "
                         f"for a contiguous out of {out.numel()} elements, got {gathered.dtype} {tuple(gathered.shape)}")
    block_size = 1024
    if out.numel():
        majority_vote_kernel[(triton.cdiv(out.numel(), block_size),)](gathered, out, out.numel(), n_words,
                                                                      WORLD_SIZE=world_size, BLOCK_SIZE=block_size)
    return out
