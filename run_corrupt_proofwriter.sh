#!/usr/bin/env bash
echo "run_corrupt_proofwriter.sh: not implemented yet" >&2
exit 2
