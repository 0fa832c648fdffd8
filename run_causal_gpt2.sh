#!/usr/bin/env bash
echo "run_causal_gpt2.sh: not implemented yet" >&2
exit 2
