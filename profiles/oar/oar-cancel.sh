#!/bin/sh
# Cancel command of the oar profile: Snakemake passes one or more OAR job ids.
exec oardel "$@"
