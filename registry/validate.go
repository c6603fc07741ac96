package registry

import (
	"errors"
	"fmt"

	"github.com/vwire/vwire/registry/registrypb"
)

// ErrInvalid wraps every refusal of a malformed object.
var ErrInvalid = errors.New("invalid")

// ValidateService checks a network service before it is stored.
func ValidateService(s *registrypb.NetworkService) error {
	if err := ValidateLabel(s.GetName()); err != nil {
		return errorf(ErrInvalid, "network service name %v", err)
	}
	if s.GetPayload() == registrypb.Payload_PAYLOAD_UNSPECIFIED {
		return errorf(ErrInvalid, "network service %q: payload is not set (want IP or ETHERNET)", s.GetName())
	}
	if _, ok := registrypb.Payload_name[int32(s.GetPayload())]; !ok {
		return errorf(ErrInvalid, "network service %q: unknown payload %d (want IP or ETHERNET)", s.GetName(), s.GetPayload())
	}
	if s.GetPlainVxlan() && s.GetPayload() != registrypb.Payload_ETHERNET {
		return errorf(ErrInvalid, "network service %q: plainVxlan is for ETHERNET services (an IP vWire across domains is always inside WireGuard)", s.GetName())
	}
	for i, p := range s.GetAllowedSpiffeIds() {
		if err := validatePattern(p); err != nil {
			return errorf(ErrInvalid, "network service %q: allowedSpiffeIDs[%d] %q: %v (want spiffe://td/path, spiffe://td/path/* or spiffe://td/*)", s.GetName(), i, p, err)
		}
	}
	for i, m := range s.GetMatches() {
		if err := validateSelector(m.GetSourceSelector()); err != nil {
			return errorf(ErrInvalid, "network service %q: matches[%d].sourceSelector: %v", s.GetName(), i, err)
		}
		if err := ValidateLabels(m.GetMetadata().GetLabels()); err != nil {
			return errorf(ErrInvalid, "network service %q: matches[%d].metadata.labels: %v", s.GetName(), i, err)
		}
		for j, r := range m.GetRoutes() {
			if err := validateSelector(r.GetDestinationSelector()); err != nil {
				return errorf(ErrInvalid, "network service %q: matches[%d].routes[%d].destinationSelector: %v", s.GetName(), i, j, err)
			}
		}
	}
	return nil
}

// validateSelector checks a selector: label keys, and values that are
// label values or templates over the client's labels ("{{.nodeName}}").
func validateSelector(sel map[string]string) error {
	plain := map[string]string{}
	for k, v := range sel {
		if !isTemplate(v) {
			plain[k] = v
			continue
		}
		plain[k] = ""
		if _, err := parseSelector(v); err != nil {
			return fmt.Errorf("label %s: %v (a template over the client's labels, e.g. \"{{.nodeName}}\")", k, err)
		}
	}
	return ValidateLabels(plain)
}

// ValidateEndpoint checks an endpoint registration before it is stored. A
// network service may name another domain (svc@floating.example): the
// domain's proxy registers the endpoint there too.
func ValidateEndpoint(e *registrypb.Endpoint) error {
	if err := ValidateEndpointName(e.GetName()); err != nil {
		return errorf(ErrInvalid, "%v", err)
	}
	if len(e.GetNetworkServiceNames()) == 0 {
		return errorf(ErrInvalid, "endpoint %q provides no network service (networkServiceNames is empty)", e.GetName())
	}
	seen := map[string]bool{}
	for _, s := range e.GetNetworkServiceNames() {
		if _, err := ParseName(s); err != nil {
			return errorf(ErrInvalid, "endpoint %q: networkServiceNames: %v", e.GetName(), err)
		}
		if seen[s] {
			return errorf(ErrInvalid, "endpoint %q: network service %q is listed twice", e.GetName(), s)
		}
		seen[s] = true
	}
	if err := ValidateLabels(e.GetLabels()); err != nil {
		return errorf(ErrInvalid, "endpoint %q: labels: %v", e.GetName(), err)
	}
	for svc, l := range e.GetServiceLabels() {
		if !seen[svc] {
			return errorf(ErrInvalid, "endpoint %q: networkServiceLabels names %q, which is not one of its networkServiceNames %v", e.GetName(), svc, e.GetNetworkServiceNames())
		}
		if err := ValidateLabels(l.GetLabels()); err != nil {
			return errorf(ErrInvalid, "endpoint %q: networkServiceLabels[%s]: %v", e.GetName(), svc, err)
		}
	}
	return nil
}

// ValidateStaticEndpoint checks an endpoint of a manifest: it may provide
// only this domain's services (an endpoint of another domain's service is
// registered, and refreshed, through this domain's proxy).
func ValidateStaticEndpoint(e *registrypb.Endpoint) error {
	if err := ValidateEndpoint(e); err != nil {
		return err
	}
	for _, s := range e.GetNetworkServiceNames() {
		if n, _ := ParseName(s); n.Domain != "" {
			return errorf(ErrInvalid, "endpoint %q: network service %q names another domain; a manifest registers endpoints of this domain's services only (an endpoint registers %q itself, through its domain's proxy)",
				e.GetName(), s, s)
		}
	}
	return nil
}

// kindError is an error whose message says what happened and whose kind
// (one of the package's sentinels) says how to answer it.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

func errorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...)}
}
