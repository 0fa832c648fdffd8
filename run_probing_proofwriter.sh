#!/usr/bin/env bash
echo "run_probing_proofwriter.sh: not implemented yet" >&2
exit 2
