//! The API's description and its page: `/openapi.json` and the Swagger UI at `/docs`, served
//! without a token (they hold no data). The page's Authorize box takes a bearer token, which it
//! sends with the calls it makes.

use axum::Router;
use utoipa::openapi::{
    ContentBuilder, OpenApi, Ref, ResponseBuilder,
    security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
};
use utoipa_swagger_ui::SwaggerUi;

/// `openapi` completed with the bearer scheme and the answers every operation may get, and
/// served with its page.
pub fn docs(mut openapi: OpenApi) -> Router {
    complete(&mut openapi);
    SwaggerUi::new("/docs").url("/openapi.json", openapi).into()
}

/// Adds the bearer scheme every operation needs and the problem+json answers any request may
/// get from the guard, the extractors or the store, where the operation does not describe them
/// itself.
pub fn complete(openapi: &mut OpenApi) {
    openapi
        .components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An OAuth 2.0 access token (JWT); see docs/security.md",
                    ))
                    .build(),
            ),
        );
    openapi.security = Some(vec![SecurityRequirement::new(
        "bearer",
        Vec::<String>::new(),
    )]);
    let problem = |what: &str| {
        ResponseBuilder::new()
            .description(what)
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build()
    };
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            (&mut item.get, false),
            (&mut item.post, true),
            (&mut item.put, true),
            (&mut item.patch, true),
            (&mut item.delete, false),
        ];
        for (operation, writes) in operations {
            let Some(operation) = operation.as_mut() else {
                continue;
            };
            let mut common = vec![
                ("400", "malformed path, query or header"),
                ("401", "no valid bearer token"),
                ("403", "the caller's roles do not allow it"),
                ("404", "no such resource"),
                ("422", "a field is invalid"),
                ("429", "over a rate limit; see Retry-After"),
                ("503", "the service cannot take the request now; retry"),
            ];
            if writes {
                common.extend([
                    ("408", "the body did not arrive in time"),
                    ("409", "refused in the current state"),
                    ("413", "body too large"),
                    ("415", "not a JSON body"),
                ]);
            }
            for (status, what) in common {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| problem(what).into());
            }
        }
    }
}

/// The description of one service (or of all three, in the one-process binary) before its
/// routes add their operations.
pub fn base(title: &str, description: &str) -> OpenApi {
    use utoipa::openapi::{InfoBuilder, LicenseBuilder, OpenApiBuilder};
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title(title)
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(format!(
                    "{description} Amounts are strings of digits in minor units. Errors are RFC 9457 problem+json with a stable `code`."
                )))
                .license(Some(LicenseBuilder::new().name("Apache-2.0").build())),
        )
        .build()
}
