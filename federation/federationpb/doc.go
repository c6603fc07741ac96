// Package federationpb is the federation API (federation.proto) and its
// generated Go code: the domain's bundle, its peers, CA rotation. Edit the
// .proto and run `make generate`; `make verify` fails on stale code.
package federationpb
