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
		return fmt.Errorf("%w: network service name %v", ErrInvalid, err)
	}
	if s.GetPayload() == registrypb.Payload_PAYLOAD_UNSPECIFIED {
		return fmt.Errorf("%w: network service %q: payload is not set (want IP or ETHERNET)", ErrInvalid, s.GetName())
	}
	if _, ok := registrypb.Payload_name[int32(s.GetPayload())]; !ok {
		return fmt.Errorf("%w: network service %q: unknown payload %d (want IP or ETHERNET)", ErrInvalid, s.GetName(), s.GetPayload())
	}
	for i, m := range s.GetMatches() {
		if err := ValidateLabels(m.GetSourceSelector()); err != nil {
			return fmt.Errorf("%w: network service %q: matches[%d].sourceSelector: %v", ErrInvalid, s.GetName(), i, err)
		}
		for j, r := range m.GetRoutes() {
			if err := ValidateLabels(r.GetDestinationSelector()); err != nil {
				return fmt.Errorf("%w: network service %q: matches[%d].routes[%d].destinationSelector: %v", ErrInvalid, s.GetName(), i, j, err)
			}
		}
	}
	return nil
}

// ValidateEndpoint checks an endpoint registration before it is stored.
func ValidateEndpoint(e *registrypb.Endpoint) error {
	if err := ValidateEndpointName(e.GetName()); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if len(e.GetNetworkServiceNames()) == 0 {
		return fmt.Errorf("%w: endpoint %q provides no network service (networkServiceNames is empty)", ErrInvalid, e.GetName())
	}
	seen := map[string]bool{}
	for _, s := range e.GetNetworkServiceNames() {
		n, err := ParseName(s)
		if err != nil {
			return fmt.Errorf("%w: endpoint %q: networkServiceNames: %v", ErrInvalid, e.GetName(), err)
		}
		if n.Domain != "" {
			return fmt.Errorf("%w: endpoint %q: network service %q names another domain; register with that domain's registry",
				ErrInvalid, e.GetName(), s)
		}
		if seen[s] {
			return fmt.Errorf("%w: endpoint %q: network service %q is listed twice", ErrInvalid, e.GetName(), s)
		}
		seen[s] = true
	}
	if err := ValidateLabels(e.GetLabels()); err != nil {
		return fmt.Errorf("%w: endpoint %q: labels: %v", ErrInvalid, e.GetName(), err)
	}
	return nil
}
