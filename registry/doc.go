// Package registry is a vwire domain's registry: network services, the
// endpoints that provide them, and the match rules that choose an endpoint
// for a client. It stores everything in etcd (embedded by default, or an
// external cluster), expires endpoint registrations through etcd leases, and
// serves the registrypb API over SPIFFE mutual TLS.
//
// It also owns vwire's names (service@domain, labels) and the
// Kubernetes-style manifests that `vwire apply` reads.
package registry
