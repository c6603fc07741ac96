// Package kind is the Kubernetes end-to-end test (make e2e-kind): Marsha's
// two Kubernetes domains as kind clusters with vwire's chart, beside her
// two compose domains, all federated, with pods that get vWires by
// annotation. It has no code of its own.
package kind
