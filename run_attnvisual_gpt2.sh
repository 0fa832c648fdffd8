#!/usr/bin/env bash
echo "run_attnvisual_gpt2.sh: not implemented yet" >&2
exit 2
