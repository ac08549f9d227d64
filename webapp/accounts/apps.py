from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "webapp.accounts"
    label = "accounts"
    verbose_name = "Accounts and roles"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed

        from webapp.accounts.signals import (
            close_live_sockets_on_logout,
            count_failed_sign_in,
            forget_failures_on_sign_in,
        )

        user_logged_out.connect(close_live_sockets_on_logout, dispatch_uid="close-live-sockets-on-logout")
        user_login_failed.connect(count_failed_sign_in, dispatch_uid="count-failed-sign-in")
        user_logged_in.connect(forget_failures_on_sign_in, dispatch_uid="forget-failures-on-sign-in")
