"""Generated gRPC code of voxgate's own protos (proto/voxgate/v1): scripts/gen_proto.sh."""
