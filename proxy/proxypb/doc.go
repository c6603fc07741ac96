// Package proxypb is the network service API (networkservice.proto) and its
// generated Go code: Request, Close and Monitor on a Connection, with its
// path, typed mechanism and IP context. The proxy and the gateway serve it.
// Edit the .proto and run `make generate`; `make verify` fails on stale code.
package proxypb
