#!/usr/bin/env bash
echo "run_probing_arc.sh: not implemented yet" >&2
exit 2
