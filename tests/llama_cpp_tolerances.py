"""How far our outputs may sit from llama.cpp's recorded ones (../shared/reference), and why.

The tolerances come from llama.cpp's own variation, not from one machine's run. Evaluating the
reference's 128 greedy steps as one batch instead of token by token (llama-cpp-python 0.3.36,
SmolLM2-135M-Instruct Q4_1), llama.cpp disagrees with itself at 2 steps, always at a top-1/top-2
margin of 0.101 or less, and its mean |logit difference| over the top 8 is 0.127. Floating-point
reduction order also differs between CPUs (vector width, fastmath reassociation), for llama.cpp
and for us alike.
"""
import math

LLAMA_CPP_SELF_TOP8 = 0.127       # llama.cpp batch vs token by token, mean top-8 |logit difference|

# Our mean top-8 difference may be up to 1.5x llama.cpp's own (seen: 0.168 on AMD Zen 4 with
# AVX-512, 0.174 on an Intel Xeon with AVX-512).
MAX_TOP8 = 1.5 * LLAMA_CPP_SELF_TOP8

# An argmax miss must sit at a near-tie of llama.cpp's logits: two logits that each move by about
# MAX_TOP8 in opposite directions swap order at a margin of 2 * 0.19 = 0.38 or less; 0.35 stays a
# little below (misses seen on the Xeon: margins 0.011, 0.101, 0.310).
NEAR_TIE = 0.35

# Perplexity over the reference's 255 scored positions: per-position noise of mean magnitude
# 0.127 (sigma ~ 0.127 * sqrt(pi / 2) = 0.16 for a normal) averages to a standard error of
# 0.16 / sqrt(255) = 0.010 in mean NLL; three standard errors allow exp(0.030) - 1 = 3.0%.
# Seen: -0.4% on AMD Zen 4, +1.0% on the Xeon.
PPL_RTOL = math.exp(3 * LLAMA_CPP_SELF_TOP8 * math.sqrt(math.pi / 2) / math.sqrt(255)) - 1
