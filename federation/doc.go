// Package federation is vwire's identity plumbing: where a component's X.509
// SVID comes from (a SPIRE agent's Workload API or the built-in development
// CA of `vwire domain`), which trust bundles it accepts, and the mutual TLS
// credentials, with explicit authorizers, that every gRPC hop uses.
//
// Nothing here authorizes "any" identity: every server and client names the
// IDs or the trust domain it accepts.
package federation
