"""Code generated from protos/mcp/v1 by tools/gen_protos.py; do not edit."""
