from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "webapp.accounts"
    label = "accounts"
    verbose_name = "Accounts and roles"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out

        from webapp.accounts.signals import close_live_sockets_on_logout

        user_logged_out.connect(close_live_sockets_on_logout, dispatch_uid="close-live-sockets-on-logout")
