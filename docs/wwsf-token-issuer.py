"""An operator's WWSF issuing a token for the eP-CSCF (README "Web login"): after its own login,
the web site signs a short-lived JWT naming the user's IMPU and hands it to the page.

    pip install pyjwt[crypto]
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out wwsf.key
    openssl pkey -in wwsf.key -pubout -out wwsf.pub       # → [auth] keys = wwsf.pub
"""
import sys
import time

import jwt  # PyJWT

ISSUER = "https://wic.example.com"        # [auth] issuers = https://wic.example.com
AUDIENCE = "ims.example.com"              # [auth] audience (default: the [core] domain)


def issue(impu: str, key_pem: bytes, lifetime: int = 300) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": impu, "iat": now, "nbf": now, "exp": now + lifetime}
    return jwt.encode(claims, key_pem, algorithm="ES256")   # the page sends "Authorization: Bearer <it>"


if __name__ == "__main__":  # python docs/wwsf-token-issuer.py wwsf.key sip:alice@ims.example.com
    print(issue(sys.argv[2], open(sys.argv[1], "rb").read()))
