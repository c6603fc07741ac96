// Package registrypb is the registry API (registry.proto) and its generated
// Go code: network services, endpoints, find with watch, and apply. Edit
// the .proto and run `make generate`; `make verify` fails on stale code.
package registrypb
